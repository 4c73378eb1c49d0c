"""The pinned corpus for the demo checkpoint: CPython standard-library modules, read from the running interpreter.

Two fixed, sorted, disjoint lists of paths relative to `sysconfig.get_paths()["stdlib"]`: TRAIN_MODULES (pure-Python
modules and a few packages' files) and HELDOUT_MODULES (small self-contained modules kept out of training, used only
for the held-out perplexity). Every module listed exists in CPython 3.10 through 3.13 (modules removed in 3.12/3.13,
generated files such as `_sysconfigdata_*`, and jokes such as `this.py` are left out), so `tools/train_demo.py`
runs on any of them; the texts themselves differ between Python versions, which is why the checkpoint records the
interpreter version it was trained with.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

TRAIN_MODULES: tuple[str, ...] = (
    "__future__.py", "_aix_support.py", "_collections_abc.py", "_compat_pickle.py", "_compression.py",
    "_markupbase.py", "_osx_support.py", "_py_abc.py", "_pydecimal.py", "_pyio.py", "_sitebuiltins.py",
    "_strptime.py", "_threading_local.py", "_weakrefset.py", "abc.py", "argparse.py", "ast.py", "base64.py",
    "bdb.py", "bz2.py", "cProfile.py", "calendar.py", "cmd.py", "code.py", "codecs.py", "codeop.py",
    "collections/__init__.py", "collections/abc.py", "compileall.py", "concurrent/futures/__init__.py",
    "concurrent/futures/_base.py", "concurrent/futures/process.py", "concurrent/futures/thread.py",
    "configparser.py", "contextlib.py", "contextvars.py", "copy.py", "copyreg.py", "csv.py", "dataclasses.py",
    "datetime.py", "dbm/__init__.py", "dbm/dumb.py", "dbm/gnu.py", "dbm/ndbm.py", "decimal.py", "difflib.py",
    "dis.py", "doctest.py", "email/__init__.py", "email/_encoded_words.py", "email/_header_value_parser.py",
    "email/_parseaddr.py", "email/_policybase.py", "email/base64mime.py", "email/charset.py",
    "email/contentmanager.py", "email/encoders.py", "email/errors.py", "email/feedparser.py", "email/generator.py",
    "email/header.py", "email/headerregistry.py", "email/iterators.py", "email/message.py", "email/parser.py",
    "email/policy.py", "email/quoprimime.py", "email/utils.py", "enum.py", "filecmp.py", "fileinput.py",
    "ftplib.py", "functools.py", "genericpath.py", "getpass.py", "gettext.py", "glob.py", "gzip.py", "hashlib.py",
    "hmac.py", "html/__init__.py", "html/parser.py", "http/__init__.py", "http/client.py", "http/cookiejar.py",
    "http/cookies.py", "http/server.py", "imaplib.py", "inspect.py", "io.py", "ipaddress.py", "json/__init__.py",
    "json/decoder.py", "json/encoder.py", "json/scanner.py", "json/tool.py", "keyword.py", "linecache.py",
    "locale.py", "logging/__init__.py", "logging/config.py", "logging/handlers.py", "lzma.py", "mailbox.py",
    "mimetypes.py", "modulefinder.py", "netrc.py", "ntpath.py", "nturl2path.py", "numbers.py", "opcode.py",
    "operator.py", "optparse.py", "os.py", "pathlib.py", "pdb.py", "pickle.py", "pickletools.py", "pkgutil.py",
    "platform.py", "plistlib.py", "poplib.py", "posixpath.py", "pprint.py", "profile.py", "pstats.py", "pty.py",
    "py_compile.py", "pyclbr.py", "pydoc.py", "queue.py", "quopri.py", "random.py", "reprlib.py", "rlcompleter.py",
    "runpy.py", "sched.py", "secrets.py", "selectors.py", "shelve.py", "shutil.py", "signal.py", "site.py",
    "smtplib.py", "socket.py", "socketserver.py", "sqlite3/__init__.py", "sqlite3/dbapi2.py", "sqlite3/dump.py",
    "sre_compile.py", "sre_constants.py", "sre_parse.py", "ssl.py", "stat.py", "statistics.py", "stringprep.py",
    "struct.py", "subprocess.py", "symtable.py", "sysconfig.py", "tabnanny.py", "tarfile.py", "tempfile.py",
    "threading.py", "timeit.py", "token.py", "tokenize.py", "trace.py", "traceback.py", "tracemalloc.py", "tty.py",
    "turtle.py", "types.py", "typing.py", "unittest/__init__.py", "unittest/__main__.py", "unittest/_log.py",
    "unittest/async_case.py", "unittest/case.py", "unittest/loader.py", "unittest/main.py", "unittest/mock.py",
    "unittest/result.py", "unittest/runner.py", "unittest/signals.py", "unittest/suite.py", "unittest/util.py",
    "urllib/__init__.py", "urllib/error.py", "urllib/parse.py", "urllib/request.py", "urllib/response.py",
    "urllib/robotparser.py", "uuid.py", "warnings.py", "wave.py", "weakref.py", "webbrowser.py",
    "wsgiref/__init__.py", "wsgiref/handlers.py", "wsgiref/headers.py", "wsgiref/simple_server.py",
    "wsgiref/util.py", "wsgiref/validate.py", "xml/dom/NodeFilter.py", "xml/dom/__init__.py", "xml/dom/domreg.py",
    "xml/dom/expatbuilder.py", "xml/dom/minicompat.py", "xml/dom/minidom.py", "xml/dom/pulldom.py",
    "xml/dom/xmlbuilder.py", "xml/etree/ElementInclude.py", "xml/etree/ElementPath.py", "xml/etree/ElementTree.py",
    "xml/etree/__init__.py", "xml/etree/cElementTree.py", "zipapp.py", "zipfile.py", "zipimport.py",
    "zoneinfo/__init__.py", "zoneinfo/_common.py", "zoneinfo/_tzpath.py", "zoneinfo/_zoneinfo.py",
)

HELDOUT_MODULES: tuple[str, ...] = (
    "bisect.py", "colorsys.py", "fnmatch.py", "fractions.py", "getopt.py", "graphlib.py", "heapq.py", "shlex.py",
    "string.py", "textwrap.py",
)


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def read_modules(names: tuple[str, ...], root: Path | None = None) -> list[tuple[str, str]]:
    """(name, source text) for each module, in the given order; every missing file is named in one error."""
    root = stdlib_dir() if root is None else Path(root)
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} pinned stdlib module(s) not found under {root}: {', '.join(missing)} "
            "(the demo corpus is pinned for CPython 3.10-3.13)"
        )
    # newline="" keeps the files' own line endings; CPython's sources are LF and UTF-8.
    return [(name, (root / name).read_text(encoding="utf-8")) for name in names]


def _check() -> None:
    assert list(TRAIN_MODULES) == sorted(set(TRAIN_MODULES)), "TRAIN_MODULES must be sorted and unique"
    assert list(HELDOUT_MODULES) == sorted(set(HELDOUT_MODULES)), "HELDOUT_MODULES must be sorted and unique"
    assert not set(TRAIN_MODULES) & set(HELDOUT_MODULES), "train and held-out modules must be disjoint"


_check()
