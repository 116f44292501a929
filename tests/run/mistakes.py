"""
One configuration file with every kind of mistake an operator makes at
once, and what C{check} must say of each: the regression file of "every
problem at once" (issue: a file with 15 mistakes reported 13).

Shared by the unit test (L{tests.run.test_loading}) and the end-to-end
test through the C{tlsgateway check} command
(L{tests.integration.test_check}).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import attrs
import trustme


@attrs.frozen
class Expected:
    """
    One problem C{check} must print: at C{line}, in C{section}, at C{key}
    (L{None} for the whole section), with C{fragment} in its message.
    """

    line: int
    section: str
    key: str | None
    fragment: str

    def matches(self, printed: str, path: str) -> bool:
        label = f"[{self.section}] {self.key}" if self.key else f"[{self.section}]"
        return printed.startswith(f"{path}:{self.line}: {label}: ") and (
            self.fragment in printed
        )


#: Each line of the file: its text, and the problems it must raise.
_LINES: list[tuple[str, list[tuple[str | None, str]]]] = [
    ("[gateway]", []),
    ("workers = lots", [("workers", "'lots' is not a number of workers")]),
    (
        "access_log = {folder}/no-such-folder/access.log",
        [("access_log", "does not exist")],
    ),
    ("", []),
    ("[listener:web]", []),
    ("listen = tcp:0:interface=127.0.0.1", []),
    ("mode = terminate", []),
    ("upstream = app", []),
    ("certificate = {folder}/missing.pem", [("certificate", "cannot read")]),
    ("private_key = {folder}/site.key", []),
    (
        "allow = 10.0.0.1/8, 300.1.1.1, 10.0.0.0/33",
        [
            ("allow", "'10.0.0.1/8' has host bits set"),
            ("allow", "'300.1.1.1' is not an IP address"),
            ("allow", "'10.0.0.0/33': /33 is not a prefix length"),
        ],
    ),
    ("idle_timeuot = 5m", [("idle_timeuot", "did you mean idle_timeout?")]),
    ("connect_timeout = 5 parsecs", [("connect_timeout", "parsecs")]),
    ("protocols = TLSv1.1 TLSv1.3", [("protocols", "TLSv1.1 is not allowed")]),
    ("", []),
    ("[listener:db]", []),
    ("listen = tcp:15432:interface=127.0.0.1", []),
    ("mode = terminate", []),
    ("certificate = {folder}/site.pem", []),
    ("private_key = {folder}/folder.key", [("private_key", "Is a directory")]),
    ("client_ca = {folder}/missing-ca.pem", [("client_ca", "cannot read")]),
    ("verify_client = on", []),
    ("proxy_pass = app", [("proxy_pass", "this is NGINX's name")]),
    ("routes =", []),
    ("    db.example.test nowhere", [("routes", "upstream 'nowhere' is not defined")]),
    ("    bad~( app", [("routes", "'bad~(' is not a host name")]),
    ("", []),
    ("[listener:other]", []),
    (
        "listen = tcp:15432:interface=127.0.0.1",
        [("listen", "listens on the same address as")],
    ),
    ("upstream = app", []),
    ("certificates = site", []),
    ("", []),
    ("[listner:typo]", [(None, "unknown section")]),
    ("", []),
    ("[certificate:site]", []),
    ("certificate = {folder}/live/x/fullchain.pem", []),
    (
        "private_key = {folder}/live/x/privkey.pem",
        [
            (
                "private_key",
                "live/x/privkey.pem -> ../../archive/x/privkey3.pem does not match"
                " the certificate in {folder}/live/x/fullchain.pem ->"
                " ../../archive/x/fullchain3.pem",
            )
        ],
    ),
    ("", []),
    ("[upstream:app]", []),
    (
        "servers = 127.0.0.1:99999 weight=x",
        [
            ("servers", "'99999' is not a port"),
            ("servers", "weight=x: 'x' is not a whole number"),
        ],
    ),
    ("balance = roundrobin", [("balance", "'roundrobin' is not one of")]),
    ("", []),
    # The copy configparser keeps: the first one's mistakes are still named.
    ("[upstream:app]", [(None, "duplicate section (first on line 39)")]),
    ("servers = 127.0.0.1:8080", [("servers", "duplicate key (first on line 40)")]),
    ("balance = random", [("balance", "duplicate key (first on line 41)")]),
    ("tls = on", []),
    ("tls_ca = {folder}/missing-upstream-ca.pem", [("tls_ca", "cannot read")]),
]


def writeMistakes(folder: Path) -> tuple[Path, list[Expected]]:
    """
    Write the file, with the certificates it names, into C{folder}: a good
    certificate pair, a key file that is a folder, and certbot's
    C{live/} links to C{archive/} files whose key is another certificate's.

    @return: the INI file, and every problem C{check} must print, in file
        order.
    """
    ca = trustme.CA()
    site, other = ca.issue_cert("site.test"), ca.issue_cert("other.test")
    site.cert_chain_pems[0].write_to_path(str(folder / "site.pem"))
    site.private_key_pem.write_to_path(str(folder / "site.key"))
    os.chmod(folder / "site.key", 0o600)
    (folder / "folder.key").mkdir()
    archive, live = folder / "archive" / "x", folder / "live" / "x"
    archive.mkdir(parents=True)
    live.mkdir(parents=True)
    site.cert_chain_pems[0].write_to_path(str(archive / "fullchain3.pem"))
    other.private_key_pem.write_to_path(str(archive / "privkey3.pem"))
    os.chmod(archive / "privkey3.pem", 0o600)
    (live / "fullchain.pem").symlink_to("../../archive/x/fullchain3.pem")
    (live / "privkey.pem").symlink_to("../../archive/x/privkey3.pem")
    text: list[str] = []
    expected: list[Expected] = []
    section = ""
    for number, (line, problems) in enumerate(_LINES, start=1):
        line = line.format(folder=folder)
        header = re.fullmatch(r"\[(.+)\]", line)
        if header:
            section = header[1]
        text.append(line)
        expected += [
            Expected(number, section, key, fragment.format(folder=folder))
            for key, fragment in problems
        ]
    path = folder / "gw.ini"
    path.write_text("\n".join(text) + "\n")
    return path, expected


def unmatched(printed: list[str], expected: list[Expected], path: str) -> list[object]:
    """
    What does not pair up: each expected problem with the printed line it
    matches, in order, one to one.

    @return: the expected problems no line matched and the lines no
        expected problem matched (empty when C{check} said exactly that).
    """
    left = list(printed)
    missing: list[object] = []
    for problem in expected:
        match = next((line for line in left if problem.matches(line, path)), None)
        if match is None:
            missing.append(problem)
        else:
            left.remove(match)
    return missing + left
