"""
Writing files so that a crash, a full disk or Ctrl-C never leaves half of one: each is written to a temporary
file beside its place, then renamed over it (a reader sees the old file or the new one, never a mix). The
temporary name holds the process id, so that two processes writing one file never mix theirs. A write that
fails is a WriteError (an OSError) that names the file.
"""
import contextlib
import hashlib
import os
import tempfile
try:
    import fcntl  # POSIX file locks (none on Windows: there, two writers are not kept apart)
except ImportError:
    fcntl = None
from pathlib import Path

import cv2
import torch


class WriteError(OSError):
    def __init__(self, path, reason):
        super().__init__(f'{path}: cannot save ({reason})')
        self.path = path
        self.reason = reason


@contextlib.contextmanager
def replacing(path):
    """The temporary path to write path's new content to; it replaces path when the block ends. On an error
    it is deleted, and a WriteError naming path is raised."""
    path = Path(path)
    tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp')
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not isinstance(e, Exception) or isinstance(e, WriteError):  # Ctrl-C passes, after the clean-up
            raise
        # torch.save reports a failed write as a RuntimeError
        reason = getattr(e, 'strerror', None) or str(e).strip() or type(e).__name__
        raise WriteError(path, reason.splitlines()[-1]) from None


LOCKS = Path(tempfile.gettempdir()) / 'nano-yolov5-locks'  # beside no dataset: nothing left in one


@contextlib.contextmanager
def locked(name):
    """Holds an exclusive lock named name (any text: a path, a URL), so that two processes (two runs, DDP ranks) do
    one thing, such as fetching a file, one after the other. Its file in LOCKS stays: removing it would race."""
    LOCKS.mkdir(parents=True, exist_ok=True)
    with open(LOCKS / hashlib.sha256(str(name).encode()).hexdigest()[:20], 'a') as f:
        if fcntl:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl:
                fcntl.flock(f, fcntl.LOCK_UN)


def save_text(text, path):
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_image(img, path):
    """img written to path, as .jpg where OpenCV has no writer for the format (.mpo, .dng); returns the path
    written."""
    path = Path(path)
    if path.suffix.lower() in ('.mpo', '.dng'):
        path = path.with_suffix('.jpg')
    try:
        ok, encoded = cv2.imencode(path.suffix, img)  # the suffix picks the format
    except cv2.error as e:
        ok, encoded = False, e.err
    if not ok:
        raise WriteError(path, f'OpenCV cannot write it: {encoded}' if isinstance(encoded, str) else 'OpenCV')
    with replacing(path) as tmp:
        tmp.write_bytes(encoded.tobytes())
    return path


def save_torch(obj, path):
    with replacing(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
