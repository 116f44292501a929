// Command echtool is the real Encrypted Client Hello stack of the ECH
// tests: Go's crypto/tls as an ECH client and as a TLS server (an RFC 9849
// backend without keys, or a shared-mode server with them).  Standard
// library only; the tests build it.
//
//	echtool client -addr HOST:PORT -name INNER -configs BASE64 -ca CA.pem [-curves x25519]
//	echtool server -listen HOST:PORT -cert CERT -key KEY [-curves p256] [-echkey FILE]
package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

func curves(list string) []tls.CurveID {
	var out []tls.CurveID
	for _, name := range strings.Split(list, ",") {
		switch name {
		case "x25519":
			out = append(out, tls.X25519)
		case "p256":
			out = append(out, tls.CurveP256)
		case "":
		default:
			fmt.Fprintln(os.Stderr, "unknown curve", name)
			os.Exit(2)
		}
	}
	return out
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func client(args []string) {
	flags := flag.NewFlagSet("client", flag.ExitOnError)
	addr := flags.String("addr", "", "gateway address")
	name := flags.String("name", "", "inner server name")
	configs := flags.String("configs", "", "ECHConfigList, base64 (none: no ECH)")
	ca := flags.String("ca", "", "CA certificate file")
	curveList := flags.String("curves", "", "curve preferences")
	flags.Parse(args)
	config := &tls.Config{ServerName: *name, MinVersion: tls.VersionTLS13, CurvePreferences: curves(*curveList)}
	if *ca != "" {
		data, err := os.ReadFile(*ca)
		if err != nil {
			fail(err)
		}
		config.RootCAs = x509.NewCertPool()
		config.RootCAs.AppendCertsFromPEM(data)
	} else {
		config.InsecureSkipVerify = true
	}
	if *configs != "" {
		list, err := base64.StdEncoding.DecodeString(*configs)
		if err != nil {
			fail(err)
		}
		config.EncryptedClientHelloConfigList = list
	}
	result := map[string]any{}
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	conn, err := tls.DialWithDialer(dialer, "tcp", *addr, config)
	if err != nil {
		result["error"] = err.Error()
		var rejection *tls.ECHRejectionError
		if errors.As(err, &rejection) {
			result["retry_configs"] = base64.StdEncoding.EncodeToString(rejection.RetryConfigList)
		}
	} else {
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		state := conn.ConnectionState()
		result["ech_accepted"] = state.ECHAccepted
		result["server_name"] = state.ServerName
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			result["error"] = err.Error()
		}
		result["answer"] = strings.TrimSpace(line)
		conn.Close()
	}
	out, _ := json.Marshal(result)
	fmt.Println(string(out))
}

func echKeys(path string) []tls.EncryptedClientHelloKey {
	data, err := os.ReadFile(path)
	if err != nil {
		fail(err)
	}
	var private, configs []byte
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		switch block.Type {
		case "PRIVATE KEY":
			key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				fail(err)
			}
			private = key.(interface{ Bytes() []byte }).Bytes()
		case "ECHCONFIG":
			configs = block.Bytes
		}
	}
	// The block holds an ECHConfigList; Go wants each ECHConfig alone.
	var keys []tls.EncryptedClientHelloKey
	rest := configs[2:]
	for len(rest) >= 4 {
		size := 4 + int(rest[2])<<8 + int(rest[3])
		keys = append(keys, tls.EncryptedClientHelloKey{Config: rest[:size], PrivateKey: private, SendAsRetry: true})
		rest = rest[size:]
	}
	return keys
}

func server(args []string) {
	flags := flag.NewFlagSet("server", flag.ExitOnError)
	listen := flags.String("listen", "127.0.0.1:0", "address")
	cert := flags.String("cert", "", "certificate chain")
	key := flags.String("key", "", "private key")
	curveList := flags.String("curves", "", "curve preferences")
	echKey := flags.String("echkey", "", "ECH key file (RFC 9934): shared mode")
	flags.Parse(args)
	pair, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		fail(err)
	}
	config := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13, CurvePreferences: curves(*curveList)}
	if *echKey != "" {
		config.EncryptedClientHelloKeys = echKeys(*echKey)
	}
	listener, err := tls.Listen("tcp", *listen, config)
	if err != nil {
		fail(err)
	}
	fmt.Printf("listening %s\n", listener.Addr())
	os.Stdout.Sync()
	for {
		conn, err := listener.Accept()
		if err != nil {
			fail(err)
		}
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			tlsConn := conn.(*tls.Conn)
			if err := tlsConn.Handshake(); err != nil {
				fmt.Fprintln(os.Stderr, "handshake:", err)
				return
			}
			state := tlsConn.ConnectionState()
			fmt.Fprintf(tlsConn, "server=%s ech=%t listen=%s\n", state.ServerName, state.ECHAccepted, listener.Addr())
		}()
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: echtool client|server ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "client":
		client(os.Args[2:])
	case "server":
		server(os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
}
