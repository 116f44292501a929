"""
The ACME protocol, blocking: an account, an order, its C{tls-alpn-01}
challenges, the certificate.

Built on the C{acme} client library (the one certbot uses, with
C{josepy} for JWS) rather than on JWS written by hand.  Every call here
blocks on HTTPS, so L{gateway.acme.manager} runs them in a thread, never on
the reactor.  No Twisted here.

The library no longer ships C{tls-alpn-01} (RFC 8737): the challenge and
its response are registered below, and L{challengeCertificate} builds the
self-signed certificate that the gateway presents to the validation
connection (L{gateway.connection.challenge}).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from josepy.errors import DeserializationError
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from gateway.acme.state import StateDirectory, writePrivate
from gateway.config import AcmeSettings

__all__ = [
    "ACME_TLS_ALPN",
    "AcmeFailure",
    "Issuer",
    "challengeCertificate",
    "newKeyPEM",
]

#: The ALPN protocol of a C{tls-alpn-01} validation connection.
ACME_TLS_ALPN = b"acme-tls/1"

#: id-pe-acmeIdentifier (RFC 8737, section 6.1).
_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")

#: How long one order may take, validations and finalization included.
ORDER_TIMEOUT = datetime.timedelta(seconds=90)


class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """
    The response to a C{tls-alpn-01} challenge: an empty JSON object
    (RFC 8555, section 7.5.1), sent once the challenge certificate is in
    place.
    """

    typ = "tls-alpn-01"

    def __bool__(self) -> bool:
        # An empty response is falsy, and the client library then sends a
        # POST-as-GET, which does not start the validation: the challenge
        # would stay pending for ever.
        return True


class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """
    The C{tls-alpn-01} challenge (RFC 8737).
    """

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: JWK, **kwargs: Any) -> Any:
        return self.key_authorization(account_key)


if TLSALPN01.typ not in challenges.Challenge.TYPES:
    challenges.Challenge.register(TLSALPN01)
    challenges.ChallengeResponse.register(TLSALPN01Response)


class AcmeFailure(Exception):
    """
    An order did not produce a certificate.

    @ivar problem: the ACME server's problem document (RFC 7807), or what
        stands in for it (a network error), as one line of JSON.
    """

    def __init__(self, message: str, problem: str) -> None:
        super().__init__(message)
        self.message = message
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.message}: {self.problem}"


def newKeyPEM() -> bytes:
    """
    A new ECDSA P-256 private key, PEM: what every ACME server issues for,
    and cheap to sign handshakes with.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def challengeCertificate(domain: str, keyAuthorization: str) -> bytes:
    """
    The C{tls-alpn-01} challenge certificate for C{domain} (RFC 8737,
    section 3): self-signed, for C{domain} alone, with the critical
    acmeIdentifier extension holding the SHA-256 of the key authorization.

    @return: its private key and the certificate, PEM, in one block of
        bytes (as the state directory stores it).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(keyAuthorization.encode("ascii")).digest()
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), False)
        .add_extension(
            # A DER OCTET STRING of the 32-byte digest.
            x509.UnrecognizedExtension(_ACME_IDENTIFIER, b"\x04\x20" + digest),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ) + certificate.public_bytes(serialization.Encoding.PEM)


def _document(value: Any) -> Any:
    """
    A josepy object (a problem document, an identifier) as plain JSON data.
    """
    return json.loads(value.json_dumps())


def _problemText(error: BaseException) -> str:
    """
    The problem document(s) behind an ACME library error, as JSON.
    """
    if isinstance(error, messages.Error):
        return json.dumps(_document(error), sort_keys=True)
    if isinstance(error, errors.ValidationError):
        problems = []
        for authzr in error.failed_authzrs:
            for challenge in authzr.body.challenges:
                if challenge.error is not None:
                    document = _document(challenge.error)
                    document.setdefault("identifier", _document(authzr.body.identifier))
                    problems.append(document)
        return json.dumps(
            problems if len(problems) != 1 else problems[0], sort_keys=True
        )
    if isinstance(error, errors.IssuanceError):
        return json.dumps(_document(error.error), sort_keys=True)
    return json.dumps({"detail": f"{type(error).__name__}: {error}"})


class Issuer:
    """
    One ACME account at one directory.  Orders for several certificates
    run in threads of their own; the client library's session is not
    thread-safe, so they take turns (L{issue} holds a lock).

    @ivar state: where the account key and registration are kept.
    """

    def __init__(self, settings: AcmeSettings, state: StateDirectory) -> None:
        self.settings = settings
        self.state = state
        self._client: client.ClientV2 | None = None
        self._key: JWKEC | None = None
        self._turn = threading.Lock()

    def _accountKey(self) -> JWKEC:
        """
        The account key, created once (under the account lock, so two
        workers starting together agree on one).
        """
        with self.state.lock("account", wait=True):
            pem = self.state.read(self.state.accountKeyPath)
            if pem is None:
                pem = newKeyPEM()
                writePrivate(self.state.accountKeyPath, pem)
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return JWKEC(key=key)

    def savedAccount(self) -> messages.RegistrationResource | None:
        """
        The registration saved for this C{directory}: one saved for another
        ACME server (the operator moved from staging to production) does
        not count, and is replaced by a new registration.
        """
        saved = self.state.read(self.state.accountPath)
        if saved is None:
            return None
        try:
            document = json.loads(saved)
            if document.get("directory") != self.settings.directory:
                return None
            account = messages.RegistrationResource.from_json(document["registration"])
        except (ValueError, KeyError, TypeError, AttributeError, DeserializationError):
            return None
        assert isinstance(account, messages.RegistrationResource)
        return account

    def connect(self) -> client.ClientV2:
        """
        The client, with the account registered (once: its registration is
        kept in the state directory and reused after a restart).

        @raise AcmeFailure: the directory cannot be read, or registration
            failed.
        """
        if self._client is not None:
            return self._client
        try:
            self._key = key = self._accountKey()
            network = client.ClientNetwork(
                key,
                alg=ES256,
                # Given to requests as `verify`: a CA bundle path or True.
                verify_ssl=cast(bool, self.settings.ca_bundle or True),
                user_agent="tlsgateway",
            )
            directory = client.ClientV2.get_directory(self.settings.directory, network)
            acmeClient = client.ClientV2(directory, network)
            with self.state.lock("account", wait=True):
                account = self.savedAccount()
                if account is None:
                    registration = messages.NewRegistration.from_data(
                        email=self.settings.email, terms_of_service_agreed=True
                    )
                    account = acmeClient.new_account(registration)
                    saved = {
                        "directory": self.settings.directory,
                        "registration": json.loads(account.json_dumps()),
                    }
                    writePrivate(self.state.accountPath, json.dumps(saved).encode())
                network.account = account
        except (errors.Error, OSError, ValueError) as e:
            raise AcmeFailure(
                f"cannot use the ACME account at {self.settings.directory}",
                _problemText(e),
            ) from e
        except Exception as e:  # requests' errors: connection refused, TLS
            raise AcmeFailure(
                f"cannot reach the ACME server at {self.settings.directory}",
                _problemText(e),
            ) from e
        self._client = acmeClient
        return acmeClient

    def issue(
        self,
        names: Sequence[str],
        keyPEM: bytes,
        publish: Callable[[str, bytes], None],
        withdraw: Callable[[str], None],
    ) -> bytes:
        """
        Order a certificate for C{names} with the key C{keyPEM}, answering
        each C{tls-alpn-01} challenge by publishing its certificate
        (C{publish(domain, pem)}) before telling the server to validate,
        and withdrawing it afterwards, whatever happened.

        @return: the full chain, PEM.
        @raise AcmeFailure: with the server's problem document.
        """
        with self._turn:
            return self._issue(names, keyPEM, publish, withdraw)

    def _issue(
        self,
        names: Sequence[str],
        keyPEM: bytes,
        publish: Callable[[str, bytes], None],
        withdraw: Callable[[str], None],
    ) -> bytes:
        acmeClient = self.connect()
        key = self._key
        assert key is not None
        published: list[str] = []
        try:
            csr = crypto_util.make_csr(keyPEM, list(names))
            order = acmeClient.new_order(csr)
            for authorization in order.authorizations:
                body = authorization.body
                if body.status == messages.STATUS_VALID:
                    continue
                domain = body.identifier.value
                challenge = next(
                    (c for c in body.challenges if isinstance(c.chall, TLSALPN01)),
                    None,
                )
                if challenge is None:
                    offered = ", ".join(str(c.chall.typ) for c in body.challenges)
                    raise AcmeFailure(
                        f"no tls-alpn-01 challenge for {domain}",
                        json.dumps({"detail": f"the server offers only {offered}"}),
                    )
                chall = challenge.chall
                assert isinstance(chall, TLSALPN01)
                publish(
                    domain, challengeCertificate(domain, chall.key_authorization(key))
                )
                published.append(domain)
                acmeClient.answer_challenge(challenge, chall.response(key))
            deadline = datetime.datetime.now() + ORDER_TIMEOUT
            order = acmeClient.poll_and_finalize(order, deadline)
        except AcmeFailure:
            raise
        except errors.ValidationError as e:
            raise AcmeFailure("a challenge failed", _problemText(e)) from e
        except errors.TimeoutError as e:
            raise AcmeFailure(
                f"the order was not done after {ORDER_TIMEOUT.seconds}s",
                _problemText(e),
            ) from e
        except Exception as e:  # messages.Error, requests' errors
            raise AcmeFailure(
                "the ACME server refused the order", _problemText(e)
            ) from e
        finally:
            for domain in published:
                withdraw(domain)
        chain = order.fullchain_pem
        if not chain:
            raise AcmeFailure("the order ended without a certificate", "{}")
        return chain.encode("ascii") if isinstance(chain, str) else bytes(chain)
