"""
Loading a configuration the way C{tlsgateway check}, a start and a reload
do: the INI file converted (L{gateway.config}), then every file it names
checked by building its TLS contexts (L{gateway.tls.contexts}) and looking at
the access log's folder, all problems reported in one L{ConfigError}.

A module of its own so that the dependencies run one way: L{gateway.config}
is pure (INI text in, frozen attrs out) and knows nothing of certificates;
L{gateway.tls.contexts} and the modules it uses read the model it builds; this
module, above both, is the one entry point that does the two in order.

Certificates are read once per start or reload: the contexts built to
check the files are the ones served.  A reload (L{loadChecked}) gets them
with the configuration.  The public C{load_config} returns the
configuration alone, as the embedding API promises, so it keeps the
contexts it built for that very configuration object; the first service
that starts on it takes them (L{takeContexts}), and any later start builds
its own.
"""

from __future__ import annotations

import os
import weakref

import attrs
from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure

from gateway.config import (
    ClusterSettings,
    ConfigError,
    GatewayConfig,
    GatewaySettings,
    ListenerConfig,
    Problem,
    parseConfig,
    parseConfigText,
    readConfigFile,
)
from gateway.tls.contexts import Contexts, buildContexts

__all__ = [
    "Loaded",
    "listenProblem",
    "listenReason",
    "loadChecked",
    "loadCheckedText",
    "load_config",
    "load_config_text",
    "takeContexts",
]


@attrs.frozen
class Loaded:
    """
    A configuration whose files were checked, and what the check built.

    @ivar contexts: without problems; its warnings are also in
        C{config.warnings}.  Not shared: whoever serves them owns them (an
        ACME certificate is swapped into them as it is issued).
    """

    config: GatewayConfig
    contexts: Contexts


def loadCheckedText(text: str, path: str = "<string>") -> Loaded:
    """
    Convert C{text} as if it were the file at C{path}, and check every file
    it names.

    @raise ConfigError: listing every problem, the named files' included.
    """
    try:
        config = parseConfigText(text, path)
    except ConfigError as e:
        if e.partial is None:
            raise
        # The files of everything that converted are checked as well, so
        # that a typo and a bad key are reported in one run, not one after
        # the other.
        problems = list(e.problems)
        problems += [
            problem
            for problem in buildContexts(e.partial).problems
            # A section with problems of its own is checked for what its
            # files say; what it lacks (a certificate to terminate with)
            # the conversion already reported, in its own words.
            if problem.key is not None or problem.section not in e.drafts
        ]
        problems += _accessLogProblems(e.partial.gateway, path)
        problems += _accountProblems(e.partial.gateway, path)
        problems += _clusterFileProblems(e.partial.cluster, path)
        raise ConfigError(dict.fromkeys(problems)) from None
    contexts = buildContexts(config)
    problems = contexts.problems + _accessLogProblems(config.gateway, path)
    problems += _accountProblems(config.gateway, path)
    problems += _clusterFileProblems(config.cluster, path)
    if problems:
        raise ConfigError(problems)
    config = attrs.evolve(
        config, warnings=tuple(dict.fromkeys((*config.warnings, *contexts.warnings)))
    )
    return Loaded(config, contexts)


def loadChecked(path: str | os.PathLike[str]) -> Loaded:
    """
    Read the INI file at C{path} and check every file it names.

    @raise ConfigError: listing every problem, the file's own included
        (missing, unreadable, not UTF-8).
    """
    text, name = readConfigFile(path)
    return loadCheckedText(text, name)


def load_config_text(
    text: str, path: str = "<string>", *, checkFiles: bool = True
) -> GatewayConfig:
    """
    L{load_config} for a configuration held as text.

    @param path: named in problems; relative paths in the text are relative
        to its folder.
    @param checkFiles: also load every certificate, key and CA file and
        build the TLS contexts, as C{tlsgateway check} and a start do.
        Off only for tests of the INI syntax itself.
    @raise ConfigError: listing every problem.
    """
    if not checkFiles:
        return parseConfigText(text, path)
    return _kept(loadCheckedText(text, path))


def load_config(
    path: str | os.PathLike[str], *, checkFiles: bool = True
) -> GatewayConfig:
    """
    Read the INI file at C{path} into a L{GatewayConfig}, and check every
    certificate, key and CA file it names.

    @param checkFiles: see L{load_config_text}.
    @raise ConfigError: listing every problem, the file's own included
        (missing, unreadable, not UTF-8).
    """
    if not checkFiles:
        return parseConfig(path)
    return _kept(loadChecked(path))


#: The contexts L{load_config} built, by the id of the configuration they
#: were built for, until a service takes them or the configuration is gone.
_checked: dict[int, tuple[weakref.ref[GatewayConfig], Contexts]] = {}


def _kept(loaded: Loaded) -> GatewayConfig:
    config = loaded.config
    key = id(config)
    _checked[key] = (
        weakref.ref(config, lambda _: _checked.pop(key, None)),
        loaded.contexts,
    )
    return config


def takeContexts(config: GatewayConfig) -> Contexts | None:
    """
    The contexts that L{load_config} built for this very C{config} object,
    the first time they are asked for; L{None} after that, or for a
    configuration that was not loaded here (built in code, say): the
    caller then builds them.
    """
    entry = _checked.pop(id(config), None)
    if entry is None or entry[0]() is not config:
        return None
    return entry[1]


def listenProblem(listener: ListenerConfig, description: str, reason: str) -> Problem:
    """
    A C{listen} endpoint that would not open at start or reload, at its
    listener's C{listen} key, as C{check} reports problems: with several
    listeners (and workers, where the supervisor opens them all), the
    operator learns which one clashes, not only an address.
    """
    location = listener.location
    return Problem(
        location.path,
        location.lineOf("listen"),
        f"listener:{listener.name}",
        "listen",
        f"cannot listen on {description}: {reason}",
    )


def listenReason(failure: Failure) -> str:
    """
    Why an endpoint did not listen, in the system's words (C{Address
    already in use}) rather than Twisted's sentence around them, which
    repeats the address.
    """
    error = failure.value
    if isinstance(error, CannotListenError) and isinstance(error.socketError, OSError):
        return error.socketError.strerror or str(error.socketError)
    return failure.getErrorMessage()


def _accessLogProblems(settings: GatewaySettings, path: str) -> list[Problem]:
    """
    What would keep the access log from opening at start (or reload):
    C{check} reports it rather than C{run} tripping on it.  Nothing is
    created: a file that does not exist yet needs a folder that does and
    that the gateway may write in.

    @param path: the INI file's name as the operator gave it, for messages.
    """
    destination = settings.access_log
    if destination in ("-", "off"):
        return []
    message = None
    target = os.path.realpath(destination)
    folder = os.path.dirname(target)
    if os.path.isdir(target):
        message = f"{destination} is a folder, not a file"
    elif not os.path.isdir(folder):
        message = f"cannot open {destination}: the folder {folder} does not exist"
    elif os.path.exists(target):
        if not os.access(target, os.W_OK):
            message = f"cannot open {destination}: it is not writable"
    elif not os.access(folder, os.W_OK | os.X_OK):
        message = f"cannot create {destination}: the folder {folder} is not writable"
    if message is None:
        return []
    line = settings.location.keys.get("access_log")
    return [Problem(path, line, "gateway", "access_log", message)]


def _accountProblems(settings: GatewaySettings, path: str) -> list[Problem]:
    """
    C{[gateway] user} or C{group} naming an account this machine does not
    have: C{check} says so rather than C{run} failing to drop.
    """
    from gateway.run.privileges import AccountError, accountFor

    problems = []
    for key in ("user", "group"):
        value = getattr(settings, key)
        if value is None:
            continue
        try:
            accountFor(value, None) if key == "user" else accountFor(None, value)
        except AccountError as e:
            line = settings.location.keys.get(key)
            problems.append(Problem(path, line, "gateway", key, str(e)))
    return problems


def _clusterFileProblems(cluster: ClusterSettings | None, path: str) -> list[Problem]:
    """
    C{[cluster]}'s PEM files (C{etcd_ca}, C{etcd_cert}, C{etcd_key}) that
    cannot be read: reported by C{check}, which never contacts etcd.
    """
    problems = []
    for key in ("etcd_ca", "etcd_cert", "etcd_key"):
        name = None if cluster is None else getattr(cluster, key)
        if cluster is None or name is None:
            continue
        try:
            with open(name, "rb") as f:
                pem = f.read()
        except OSError as e:
            message = f"cannot read {name}: {e.strerror or e}"
        else:
            if b"-----BEGIN " in pem:
                continue
            message = f"{name} is not a PEM file"
        line = cluster.location.keys.get(key)
        problems.append(Problem(path, line, "cluster", key, message))
    return problems
