"""Safe reading and atomic writing of files: no unpickling of code, no half-written outputs."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
import unicodedata
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from voxaug.errors import VoxaugError, file_error, not_a_file

if TYPE_CHECKING:
    from types import ModuleType


TMP_SUFFIX = ".tmp"
STALE_UNOWNED_S = 3600.0


def ensure_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` (and parents) or raise naming it, e.g. when a file already has that name."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise file_error(folder, f"{what} is an existing file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise file_error(folder, f"cannot create the {what} ({exc.strerror or exc})") from exc
    return folder


def probe_writable(folder: str | Path, name: str) -> None:
    """Create and remove a temp file of ``name`` in ``folder``: its OSError when the folder takes no new files (a
    read-only file system, no write permission), which ``os.access`` misjudges for root and on network file systems.
    The temp name is one ``clean_stale_temps`` removes, should a kill leave it behind."""
    fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{name}.{os.getpid()}.", suffix=TMP_SUFFIX)
    os.close(fd)
    os.unlink(probe)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _writer_gone(pid: int, temp: Path) -> bool:
    """Whether process ``pid``, which wrote ``temp``, has ended. Windows has no such probe: ``os.kill(pid, 0)``
    sends Ctrl-C there (signal 0 is CTRL_C_EVENT), so there a temp is taken as a dead writer's by its age alone."""
    if sys.platform == "win32":
        return _untouched_for_long(temp)
    return not _pid_alive(pid)


def _untouched_for_long(temp: Path) -> bool:
    """Whether ``temp`` was last written over ``STALE_UNOWNED_S`` ago."""
    return time.time() - temp.stat().st_mtime > STALE_UNOWNED_S


def clean_stale_temps(path: str | Path) -> list[Path]:
    """Remove temp files of ``path`` left by writers that died (SIGKILL, power loss); return them.

    Temp names are ``.NAME.PID.RANDOM.tmp``: one whose PID is no longer running is stale. One from
    a live process (a concurrent writer) is left alone; one with no readable PID (or on Windows, which cannot tell
    whether its writer runs) only after an hour.
    """
    path = Path(path)
    removed = []
    prefix = f".{path.name}."
    try:
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(TMP_SUFFIX)]
    except OSError:
        return removed
    for candidate in candidates:
        parts = candidate.name[len(prefix) : -len(TMP_SUFFIX)].split(".")
        try:
            if len(parts) == 2 and parts[0].isdigit():
                stale = int(parts[0]) != os.getpid() and _writer_gone(int(parts[0]), candidate)
            elif len(parts) == 1:  # an older ``.NAME.RANDOM.tmp`` with no PID
                stale = _untouched_for_long(candidate)
            else:  # another file's temp (``.NAME.json.PID.RANDOM.tmp``)
                continue
            if stale:
                candidate.unlink()
                removed.append(candidate)
        except OSError:
            continue
    return removed


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


NEW_FILE_MODE = 0o666 & ~_read_umask()  # what open() gives a new file; mkstemp's own 0o600 would hide outputs


def real_path(path: str | Path) -> Path:
    """``path`` with symbolic links resolved: writing there replaces the file a link points to, not the link."""
    return Path(os.path.realpath(path))


SYMLINK_LOOP = "symlink loop (symbolic links that lead back to each other)"
"""What is wrong with a path :func:`resolved_without_loop` refuses, for a message that names the path its own way."""


def is_symlink_loop(path: str | Path) -> bool:
    """Whether ``path`` leads through symbolic links back to one of them (ELOOP), rather than to a file or nowhere."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def resolved_without_loop(path: str | Path, what: str = "") -> Path:
    """``Path(path).resolve()``, with a symlink loop refused alike on every Python in one line naming ``path`` (and
    ``what`` it is): resolve raises RuntimeError on one before Python 3.13 (``voxaug`` exited 3, "unexpected"), while
    3.13 returns the looping path unchanged, which was then reported as not found. The loop is the only
    VoxaugError it raises."""
    def loop() -> VoxaugError:
        return file_error(path, f"{what + ': ' if what else ''}{SYMLINK_LOOP}")

    try:
        resolved = Path(path).resolve()
    except RuntimeError:  # pathlib's "Symlink loop from ..." before Python 3.13
        raise loop() from None
    try:
        resolved.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise loop() from None
    return resolved


def home_expanded(path: str | Path, what: str) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded as a shell would (bash leaves it in ``--opt=~/x``, and
    nothing expands an environment variable's or a TOML file's); an unknown user is one error naming ``what``."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # ~user of no such user, or no home folder at all
        raise VoxaugError(f"{what} {str(path)!r}: the home folder of {Path(path).parts[0]!r} cannot be found") from None


def utf8_name(name: str) -> str:
    """A file or folder name, or a command-line word, that the locale could not decode (``os.fsdecode``'s surrogates
    for its bytes) as the UTF-8 text those bytes spell: under ``LC_ALL=C`` without UTF-8 mode the folder ``José/``
    gives ``Jos\\udcc3\\udca9``, and a speaker named from it kept that name in the model and the index, another
    speaker than the ``José`` of a UTF-8 locale. Bytes that are not UTF-8 stay surrogates, as a UTF-8 locale has them;
    a name the locale did decode (all of it, or under Latin-1) is kept as it is."""
    if not any("\udc80" <= character <= "\udcff" for character in name):
        return name
    try:
        return os.fsencode(name).decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # text as well as surrogates: not a name the file system gave
        return name


def same_name(name: object) -> object:
    """``name`` in Unicode NFC, under which two spellings of one name (é as one code point, or e and a combining
    accent) compare equal; anything but text as it is (check_speaker_name refuses it)."""
    return unicodedata.normalize("NFC", name) if isinstance(name, str) else name


def unicode_twins(names: Iterable[str]) -> list[str]:
    """The names of ``names``, sorted, that another of them spells alike (:func:`same_name`): one speaker given twice,
    as a folder made on macOS (NFD) beside one typed elsewhere (NFC), which print alike."""
    names = list(names)
    alike = [same_name(name) for name in names]
    return sorted(name for name, key in zip(names, alike) if alike.count(key) > 1)


@contextmanager
def atomic_output(path: str | Path, mode: str = "wb", like: str | Path | None = None) -> Iterator[Any]:
    """Open a temp file beside ``path``; on success flush, fsync and rename it over ``path``.

    A crash at any moment leaves either the old file or the new one, never a torn one; temp files
    of writers that were killed are removed on the next write of the same file. A symbolic link is
    written through: the file it points to is replaced, and the link stays. The new file takes the mode, owner and
    group of the one it replaces, or of ``like`` (a file that a staged copy at ``path`` is later renamed over). A
    text ``mode`` writes UTF-8, as :func:`atomic_write_text` does, whatever the locale's encoding.
    """
    path = real_path(path)
    model = path if like is None else real_path(like)
    ensure_folder(path.parent)
    if path.is_dir():
        raise file_error(path, "is a folder; expected a file name to write")
    clean_stale_temps(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX)
    except OSError as exc:
        raise write_error(path, exc) from exc
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            existing = model.stat() if model.exists() else None
            file_mode = existing.st_mode & 0o7777 if existing is not None else NEW_FILE_MODE
            if existing is not None:
                keep_ownership(handle.fileno(), existing)  # before the mode: a change of owner clears setgid
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), file_mode)
            else:  # Windows before Python 3.13 has no fchmod
                os.chmod(tmp, file_mode)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename in (None, tmp, str(path)):  # not a file the caller was reading
            raise write_error(path, exc) from exc
        raise
    fsync_dir(path.parent)


def keep_ownership(fd: int, existing: os.stat_result) -> None:
    """Give the new file of ``fd`` the owner and group of the file it replaces as far as this account may (root both,
    others a group they belong to): a lab's index of group ``lab`` and mode 660, rewritten by one member, became that
    member's own group's, which the other members could no longer read."""
    if not hasattr(os, "fchown"):  # Windows
        return
    for owner in (existing.st_uid, -1):
        try:
            os.fchown(fd, owner, existing.st_gid)
            return
        except OSError:
            continue


def write_error(path: Path, error: Exception, kept: str | None = None) -> VoxaugError:
    """Writing ``path`` failed (the previous file, if any, is intact): say why, naming the file, not its temp file.
    A full disk often reports itself only as a short write, without an errno: then the room left there is given.
    ``kept`` says what became of the file where "the previous file is kept" would not (empty: nothing to say)."""
    reason = getattr(error, "strerror", None) or (str(error).splitlines() or [type(error).__name__])[0]
    free = ""
    if getattr(error, "errno", None) in (None, errno.ENOSPC, errno.EDQUOT):
        try:
            free = f"; {shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free there"  # os.statvfs: not on Windows
        except OSError:
            pass
    if kept is None:
        kept = "the previous file is kept" if path.is_file() else ""
    return file_error(path, f"cannot write: {reason}{free}" + (f" ({kept})" if kept else ""))


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort where the file system refuses)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, like: str | Path | None = None) -> None:
    with atomic_output(path, "wb", like) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` to ``path`` and fsync it. A write that fails (a full disk) is cut back off, so the log
    keeps its earlier lines whole and ends in no torn one, and the error names the file; only a kill part-way
    can still leave a cut-short last line, which the log's readers drop."""
    path = Path(path)
    data = text.encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:  # not opened: the file, if there is one, was not touched
        raise write_error(path, exc, "nothing was appended" if path.is_file() else "") from exc
    try:
        start = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise write_error(path, exc) from exc
    finally:
        os.close(fd)


TRAIN_EXTRA_HINT = 'install the train extra: pip install "voxaug[train]"'


def import_torch(path: str | Path, what: str = "file") -> "ModuleType":
    """torch, imported when a .pt file is first touched: a runtime-only install has none and says so in one line."""
    try:
        import torch
    except ImportError:
        raise file_error(path, f"reading a {what} (.pt, a torch file) needs torch; {TRAIN_EXTRA_HINT}") from None
    return torch


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    torch = import_torch(path)
    try:
        with atomic_output(path, "wb") as handle:
            torch.save(obj, handle)
    except RuntimeError as exc:  # torch's zip writer reports a short write (a full disk) without an errno
        refused = exc.__context__  # the OSError the write raised inside torch (ENOSPC, EDQUOT, EFBIG), if any
        cause = refused if isinstance(refused, OSError) and refused.errno is not None else exc
        raise write_error(real_path(path), cause) from exc


OTHER_KINDS = ((rb"IxFI", "a FAISS speaker index"), (rb"IHNf", "a FAISS speaker index"),
               (rb"\x93NUMPY", "a NumPy array (.npy)"), (rb"RIFF.{4}WAVE", "a WAV audio file"),
               (rb"fLaC", "a FLAC audio file"))
"""Headers (patterns of their first bytes) of the files besides torch ones that the toolkit reads or writes: one given
where a torch file goes is named by its kind, not by its first bytes. A RIFF file is a WAV one only if it says WAVE
(WebP images and AVI videos are RIFF files too)."""
ONNX_SECOND_FIELDS = tuple(bytes([tag]) for tag in (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42))
"""An ONNX model is a protobuf that starts with its ir_version (tag 0x08, a small number), then the tag of the next
field it sets: producer name or version, domain, model version, doc string, graph or opset imports."""


def other_kind(start: bytes) -> str | None:
    """What a file that starts with ``start`` is, when it is a known kind of file that is no torch file."""
    if start[:1] == b"\x08" and start[1:2] < b"\x80" and start[2:3] in ONNX_SECOND_FIELDS:
        return "an ONNX model, not a torch file (an ONNX export is given as --model FILE.onnx)"
    kind = next((kind for header, kind in OTHER_KINDS if re.match(header, start, re.DOTALL)), None)
    return f"{kind}, not a torch file" if kind else None


UNPACKED_PER_BYTE = 4
"""How many bytes a torch archive may unpack to per byte of file (beyond ``UNPACKED_SLACK``). torch writes its
members uncompressed, so its own files unpack to their size; a compressed member of zeros unpacks to about a
thousand times its size, and torch allocates what the archive declares before it reads a byte."""
UNPACKED_SLACK = 1 << 20


def unpacked_size_problem(path: Path) -> str | None:
    """Why the zip archive at ``path`` is refused unread (a zip bomb: members declaring far more bytes than the file
    holds, which torch would allocate), or None. Only the archive's directory is read; one Python cannot parse is
    left to torch, which says what is wrong with it."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None
    size = path.stat().st_size
    if declared <= UNPACKED_PER_BYTE * size + UNPACKED_SLACK:
        return None
    return (f"declares {declared / 2**20:.1f} MiB of contents in a file of {size:,} bytes (a zip bomb: "
            f"torch writes its files uncompressed)")


def safe_torch_load(path: str | Path, what: str = "file") -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into one line naming the file."""
    path = Path(path)
    if not path.exists():
        raise file_error(path, f"{what} not found")
    if not path.is_file():  # a folder, or a device or pipe (/dev/null), whose size of 0 is no empty file's
        raise file_error(path, not_a_file(path, what))
    if path.stat().st_size == 0:
        raise file_error(path, f"{what} is empty (0 bytes)")
    with open(path, "rb") as handle:
        start = handle.read(64)
    if not start.startswith((b"PK", b"\x80")):  # every torch file is a zip archive or (legacy) a binary pickle
        if kind := other_kind(start):
            raise file_error(path, f"not a readable {what}: this is {kind}")
        shown = start.decode("utf-8", errors="replace").split("\n")[0][:24]
        raise file_error(path, f"not a readable {what} (corrupt or not a torch file: a torch file is a zip archive "
                               f"or a binary pickle, and this one starts with {shown!r})")
    if start.startswith(b"PK") and (bomb := unpacked_size_problem(path)):
        raise file_error(path, f"refused: the {what} {bomb}")
    torch = import_torch(path, what)
    try:
        with warnings.catch_warnings(), torch.sparse.check_sparse_tensor_invariants():
            # a hostile header makes torch warn before it fails (the error says it all); sparse tensors are checked
            # as they are rebuilt, so bad indices fail here and torch has no unchecked load to warn about
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            # torch's own rebuild of a quantized tensor warns of its TypedStorage use: nothing the user can act on
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc)
        if "GLOBAL" in detail or "Unsupported global" in detail:
            raise file_error(
                path, f"refused: the {what} holds pickled objects other than tensors and plain values "
                "(loading it could run code)"
            ) from exc
        if "Weights only load failed" in detail:
            raise file_error(
                path, f"refused: the {what} holds pickle instructions a weights-only load does not accept "
                "(corrupt, or built to run code)"
            ) from exc
        raise file_error(path, f"not a readable {what} (corrupt or not a torch file)") from exc
    except Exception as exc:  # torch.load raises many types on corrupt input (struct.error, KeyError, ...)
        detail = str(exc).strip()
        if not zipfile.is_zipfile(path) or "central directory" in detail:
            raise file_error(path, f"not a readable {what} (truncated or corrupt: not a complete torch archive)") from exc
        first = detail.splitlines()[0] if detail else type(exc).__name__
        raise file_error(path, f"not a readable {what} ({first[:160]})") from exc


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file, naming the file and the position on a syntax error."""
    path = Path(path)
    try:  # read at once: exists() raised a bare OSError (a folder that cannot be searched) and called a loop missing
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark, as some Windows editors write, is skipped
    except (FileNotFoundError, NotADirectoryError):
        raise file_error(path, f"{what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:  # an OSError's reason alone: its text names the file again
        reason = SYMLINK_LOOP if getattr(exc, "errno", None) == errno.ELOOP else getattr(exc, "strerror", None) or exc
        raise file_error(path, f"cannot read {what} ({reason})") from exc
    if not text.strip():
        raise file_error(path, f"{what} is empty")
    try:
        return loads_unique(text)
    except json.JSONDecodeError as exc:
        raise file_error(path, f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except RepeatedKeyError as exc:
        raise file_error(path, f"{exc}; merge them") from None
    except (ValueError, RecursionError) as exc:  # a number of over 4300 digits; arrays nested thousands deep
        raise file_error(path, f"unreadable {what} ({str(exc).split(';')[0]})") from None


class RepeatedKeyError(ValueError):
    """A JSON object names one key twice."""


def finite_number(value: object) -> bool:
    """A JSON value that is a number (not a bool) and finite as a float: JSON integers have no limit, and one too
    large for a float makes ``math.isfinite`` raise OverflowError."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def loads_unique(text: str) -> Any:
    """``json.loads`` that refuses a key given twice in one object (``RepeatedKeyError``)."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key given twice: ``json`` keeps the last silently, and a speaker
    listed twice in metadata.json would lose its first list of utterances. A million-utterance metadata.json
    parses in 1.2 s with the check, against 0.7 s without."""
    values = dict(pairs)
    if len(values) != len(pairs):  # rare, so the key is looked for only then
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RepeatedKeyError(f"key {key!r} appears twice in one object (JSON would keep only the last)")
            seen.add(key)
    return values


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


LOCK_POLL_S = 0.05


_HELD_LOCKS: set[int] = set()
"""Descriptors of the locks this process holds, which a forked child must not keep."""


def _drop_held_locks_in_child() -> None:
    """A forked child (a data-loader worker) shares its parent's lock descriptors, and with them the ``flock``: a
    worker outliving a killed training held its run folder's lock, and a resume right after the kill was refused."""
    for fd in _HELD_LOCKS:
        os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_drop_held_locks_in_child)


def lock_descriptor(fd: int, wait: bool) -> None:
    """Take the exclusive lock on the open file ``fd``, held until :func:`release_lock`; ``wait=False`` raises
    BlockingIOError if another holder has it. ``flock`` where there is one; Windows has no fcntl, so there its
    first byte is locked with ``msvcrt.locking`` (polled, as its own wait gives up after 10 s). That path is checked
    only on Linux, against a stand-in for msvcrt (``tests/test_portability.py``), never on Windows itself."""
    try:
        import fcntl
    except ImportError:
        _lock_first_byte(fd, wait)
        return
    fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)


def _lock_first_byte(fd: int, wait: bool) -> None:
    """Windows: lock byte 0 of ``fd`` (the file may be empty: a range past its end can be locked). ``msvcrt.locking``
    locks from the current position: a lock file is never read or written, so its descriptor stays at 0. A lock held
    elsewhere fails with EACCES (EDEADLOCK is for the retrying modes)."""
    import msvcrt

    while True:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EDEADLOCK):  # not a lock that another process holds
                raise
            if not wait:
                raise BlockingIOError(*exc.args) from exc
        time.sleep(LOCK_POLL_S)


def release_lock(fd: int) -> None:
    """Let go of the lock :func:`lock_descriptor` took on ``fd`` and close it. ``flock``'s goes with the descriptor;
    Windows' byte is unlocked first, as Microsoft's ``_locking`` asks: closing frees it only when the system gets to
    it, so a lock taken again at once (a run resumed in the same notebook) could find it still held."""
    try:
        import fcntl  # noqa: F401
    except ImportError:
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # the byte locked: the descriptor is still at 0
        except OSError:  # the close below frees it all the same, later
            pass
    os.close(fd)


@contextmanager
def held_in_this_process(fd: int, before_release: Callable[[], None] | None = None) -> Iterator[None]:
    """Keep ``fd``, whose ``flock`` the caller took, to this process: a child forked meanwhile (a data-loader
    worker) closes its copy, so it cannot hold the lock after this process lets go; only this process closes ``fd``,
    after ``before_release`` (run while the lock is still held)."""
    holder = os.getpid()
    _HELD_LOCKS.add(fd)
    try:
        yield
    finally:
        if os.getpid() == holder:  # not in a forked child, which has let go of the lock already
            _HELD_LOCKS.discard(fd)
            try:
                if before_release is not None:
                    before_release()
            finally:  # even when Ctrl-C lands here: an open fd would hold the lock as long as the process lives
                release_lock(fd)


def open_lock_file(path: Path) -> int:
    """A lock file, created writable by the group and others as the umask allows (another account can share it), and
    opened for writing where it can be: NFS (a cluster's shared disk) emulates ``flock`` with ``fcntl`` locks, and
    refuses an exclusive one on a file opened read-only (EBADF). Read-only where it cannot be opened for writing (a
    read-only file system, another account's lock file), where a local disk's ``flock`` locks it all the same."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
    return os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)


@contextmanager
def exclusive_lock(lock_path: Path, timeout_s: float, busy: Callable[[], Exception]) -> Iterator[None]:
    """``flock`` on ``lock_path``, waiting up to ``timeout_s`` (then ``busy()`` is raised); the holder removes the
    file on release (not on Windows, which cannot delete a file Python holds open: there it stays, holding no lock).
    A waiter that wins the lock on a file already removed (or replaced) tries again on the current one, so two
    processes never both hold it. A lock file left by a killed process holds no lock."""
    deadline = time.monotonic() + timeout_s
    while True:
        fd = open_lock_file(lock_path)
        try:
            lock_descriptor(fd, wait=False)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise busy() from None
            time.sleep(LOCK_POLL_S)
            continue
        except BaseException:  # NFS refusing a read-only lock file, or Ctrl-C: not left open in a process that goes on
            os.close(fd)
            raise
        if _same_file(fd, lock_path):
            break
        os.close(fd)
    # the holder removes the file while it still holds the lock, so that no one else's file is removed
    with held_in_this_process(fd, before_release=lambda: _remove_lock_file(lock_path)):
        yield


def _remove_lock_file(lock_path: Path) -> None:
    """Remove a lock file its holder is releasing; a failure is passed over (a file system turned read-only): an error
    there would hide the one that matters, and a file left behind holds no lock."""
    try:
        lock_path.unlink(missing_ok=True)
    except OSError:
        pass


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not unlinked or replaced since it was opened)."""
    try:
        held, current = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino)
