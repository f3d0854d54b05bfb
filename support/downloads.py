"""
Downloads: a file fetched with progress, resumed where it stopped (HTTP Range), from YOLO_MIRROR where set;
zips unpacked into ../datasets without replacing anything there, with a marker that says what was unpacked.
"""
import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from support.files import locked, save_text


DATASETS_DIR = Path(__file__).resolve().parents[2] / 'datasets'  # ../datasets beside the repository, as the original


# Where downloads write: a dataset's zips only ever inside DATASETS_DIR, and nothing there is replaced; a weights
# file where the command line names it. What is not verified complete is deleted, so that the next run fetches it
# again; the one exception is a .part, which the next run resumes.
def source_of(url):
    """Where url is fetched from: YOLO_MIRROR (an http(s) URL or a folder) serves the same file name, else url."""
    mirror = os.getenv('YOLO_MIRROR', '')
    return f'{mirror.rstrip("/")}/{url.rsplit("/", 1)[-1]}' if mirror else url


def download(url, path):
    """url fetched to path with progress (bytes, rate, ETA), resuming an interrupted path.part (HTTP Range); path
    appears only when complete. YOLO_MIRROR (an http(s) URL or a folder) serves the same file name instead: for
    mirrors, and for machines without internet. A .zip or .pt must be a zip archive (a mirror's error page is not).
    Two processes fetching one path take turns (a lock): the second finds it there. Raises FileNotFoundError naming
    the URL used and where to put the file; Ctrl-C exits, keeping the .part."""
    path, name, mirror, src = Path(path), url.rsplit('/', 1)[-1], os.getenv('YOLO_MIRROR', ''), source_of(url)
    part = Path(f'{path}.part')
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileNotFoundError(f'{path.parent}: cannot make the folder ({e.strerror})') from None
    with locked(path.resolve()):
        if path.exists():  # fetched by another process meanwhile
            return
        print(f'Downloading {src} to {path} ...', file=sys.stderr)
        try:
            shutil.copyfile(src, part) if mirror and not re.match(r'https?://', mirror) else _fetch(src, part)
        except KeyboardInterrupt:
            kept = f'{part} keeps what came, the next run resumes from there' if part.exists() else 'nothing kept'
            print(f'\nInterrupted: the download of {src} stopped; {kept}', file=sys.stderr)
            raise SystemExit(130) from None
        except (OSError, ValueError, http.client.HTTPException) as e:
            hint = '' if mirror else f', or set YOLO_MIRROR to a folder or an http(s) URL that serves {name}'
            raise FileNotFoundError(f'{src}: download failed ({e}). Download it by hand and put it at '
                                    f'{path.resolve()}' + hint) from None
        if path.suffix in ('.zip', '.pt') and not zipfile.is_zipfile(part):  # (every PyTorch checkpoint is a zip)
            with open(part, 'rb') as f:
                head = f.read(32)
            part.unlink()
            raise FileNotFoundError(f'{src}: not a valid zip archive, which every {path.suffix} is (it begins '
                                    f'{head!r}: an error page?); deleted, the next run fetches it again')
        os.replace(part, path)


def _fetch(url, part):
    have = part.stat().st_size if part.exists() else 0
    try:
        r = urllib.request.urlopen(urllib.request.Request(url, headers={'Range': f'bytes={have}-'}), timeout=60)
    except urllib.error.HTTPError:
        part.unlink(missing_ok=True)  # e.g. 416 for a .part the server cannot continue: the next try starts over
        raise
    have *= r.status == 206  # a server that ignores Range sends everything again
    length = r.headers.get('Content-Length')
    total, done, t0 = have + int(length) if length else -1, have, time.time()
    with r, open(part, 'ab' if have else 'wb') as f:
        while chunk := r.read(1 << 20):
            f.write(chunk)
            done += len(chunk)
            rate = (done - have) / max(time.time() - t0, 1e-9)
            eta = f'ETA {(total - done) / max(rate, 1):.0f}s' if total > 0 else ''
            print(f'\r  {done / 1e6:.1f}/{max(total, done) / 1e6:.1f} MB  {rate / 1e6:.1f} MB/s  {eta}   ', end='',
                  file=sys.stderr)
    print(file=sys.stderr)
    if total >= 0 and done != total:
        raise OSError(f'got {done} of {total} bytes, the rest resumes on the next try')


def done_marker(url, dest):
    """The file that says the zip at url is unpacked in dest: keyed by both (two datasets may ship a data.zip)."""
    return Path(dest) / f'.{url.rsplit("/", 1)[-1]}.{hashlib.sha256(url.encode()).hexdigest()[:12]}.done'


def _read_marker(url, dest):
    """What the marker of url in dest recorded: {'url', 'paths' (the top level), 'files' {path: size}}; None if there
    is none, or it is not one this code wrote for url."""
    try:
        made = json.loads(done_marker(url, dest).read_text())
        if made['url'] == url and isinstance(made['paths'], list) and isinstance(made.get('files', {}), dict):
            return made
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def is_downloaded(url, dest):
    """Whether the zip at url is unpacked in dest: its marker says so, and every file it unpacked is still there, of
    the size it had (a dataset deleted, or cut, is fetched again)."""
    made = _read_marker(url, dest)
    if made is None or not all(os.path.lexists(Path(dest) / p) for p in made['paths']):
        return False
    try:
        return all(os.path.getsize(Path(dest) / p) == size for p, size in made.get('files', {}).items())
    except (OSError, TypeError):
        return False


def _inside(path, folder):
    """Whether path is in folder (or is it): as written, .. resolved, or once links are followed."""
    return any(Path(f(path)).is_relative_to(f(folder)) for f in (os.path.abspath, os.path.realpath))


def download_zip(url, dest, folder=None, again=False):
    """A zip fetched into dest (or put there by hand), unpacked into a temporary folder beside it, moved into place
    and deleted; its marker then records each file it unpacked. A zip whose top level is not folder (a dataset's
    folder, named by its YAML's path:) is unpacked into dest/folder: two datasets that ship the same layout do not
    mix. dest must be inside DATASETS_DIR. No file there is ever replaced, but those a former zip from the same URL
    unpacked (again: fetched once more, as when a dataset stays missing). A bad zip (a corrupt member, encrypted, a
    name both a file and a folder) is deleted, to be fetched again; one that dest cannot take (a full disk, a file
    where the zip has a folder) is kept. Either way nothing of it is left in dest: a crash or an error never leaves
    a half dataset that looks whole. Two processes unpacking one URL take turns."""
    dest = Path(dest)
    if not _inside(dest, DATASETS_DIR):
        raise ValueError(f'{url}: not unpacked into {dest}: downloads only ever write inside the datasets folder '
                         f'{DATASETS_DIR}. Set the YAML\'s path: to a folder in it, or unpack the zip by hand')
    name = url.rsplit('/', 1)[-1]
    marker = done_marker(url, dest)
    with locked(marker.resolve()):
        if is_downloaded(url, dest) and not again:
            return
        zip_path, tmp = dest / name, dest / f'.{name}.{os.getpid()}.tmp'
        origin = f'{zip_path} (put there by hand)' if zip_path.exists() else f'{zip_path} (from {source_of(url)})'
        if not zip_path.exists():
            download(url, zip_path)
        ours = (_read_marker(url, dest) or {}).get('files', {})  # a former zip's files: replaceable
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _unzip(zip_path, tmp, origin)
            top = os.listdir(tmp)
            if folder and folder not in top:  # the zip holds the dataset's insides: into its folder
                os.mkdir(tmp / f'.{folder}')
                for entry in top:
                    os.replace(tmp / entry, tmp / f'.{folder}' / entry)
                os.replace(tmp / f'.{folder}', tmp / folder)
            files = {os.path.relpath(os.path.join(d, f), tmp): os.path.getsize(os.path.join(d, f))
                     for d, _, names in os.walk(tmp) for f in names}
            top = os.listdir(tmp)  # what is_downloaded() looks for first
            _move_into(tmp, dest, origin, replaceable=set(ours))
        except KeyboardInterrupt:
            print(f'\nInterrupted while unzipping {zip_path}: the zip is kept, the next run unzips it', file=sys.stderr)
            raise SystemExit(130) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        save_text(json.dumps(dict(url=url, paths=top, files=files)), marker)
        zip_path.unlink()


DEST_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)  # the disk's, not the zip's


def _unzip(zip_path, tmp, origin):
    """zip_path extracted into tmp, every member's CRC checked. A zip at fault is deleted (the next run fetches it
    again); when the disk is (full, read-only), it is kept. Raises FileNotFoundError saying which."""
    try:
        with zipfile.ZipFile(zip_path) as z:
            locked = [info.filename for info in z.infolist() if info.flag_bits & 1]
            if locked:
                raise RuntimeError(f'{locked[0]} is encrypted: it needs a password, which is never asked here')
            print(f'Unzipping {zip_path} ...', file=sys.stderr)
            z.extractall(tmp)  # member names are made safe (no absolute paths, no ..), links become plain files
    except Exception as e:  # zipfile raises many kinds for a bad zip: BadZipFile, zlib.error, EOFError, RuntimeError...
        disk = isinstance(e, OSError) and e.errno in DEST_FAULTS
        if not disk:
            zip_path.unlink()
        fate = 'kept: run again once there is room' if disk else 'deleted, the next run fetches it again'
        raise FileNotFoundError(f'{origin}: cannot unzip it ({e}); nothing extracted, the zip is {fate}') from None


def _move_into(tmp, dest, origin, replaceable=()):
    """The tree tmp moved into dest: whatever dest lacks (a whole folder in one move); a file it already has is kept,
    never replaced, unless its path (relative to dest) is in replaceable. A file where the tree has a folder, or the
    reverse, is an error before anything moves."""
    moves, kept, todo = [], [], [(tmp, dest)]
    while todo:
        src, dst = todo.pop()
        for entry in os.scandir(src):
            target = dst / entry.name
            if not os.path.lexists(target) or entry.is_file() and os.path.relpath(target, dest) in replaceable:
                moves.append((entry.path, target))
            elif entry.is_dir() and target.is_dir():
                todo.append((Path(entry.path), target))
            elif entry.is_dir() or target.is_dir():
                kinds = ('a file', 'a folder') if entry.is_dir() else ('a folder', 'a file')
                raise FileNotFoundError(f'{origin}: cannot unzip it: {target} is {kinds[0]} where the zip has '
                                        f'{kinds[1]}. Nothing extracted, the zip is kept: move that away and run again')
            else:
                kept.append(target)
    for src, dst in moves:
        shutil.move(src, dst)  # a rename (or a copy, where dst is a link to another disk)
    if kept:
        print(f'WARNING: {len(kept)} files of {origin} were already in {dest} and are kept as they are, '
              f'e.g. {kept[0]}', file=sys.stderr)
