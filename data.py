"""
From files to tensors, the bottom layer: it imports no other file of the project. Owns YOLO-format datasets (class
names, label checks and their cache), box formats, letterbox, the augmentations and their hyperparameters (numpy +
OpenCV only, no albumentations), the loader, and what a run writes (images with boxes, runs/<task>/exp, exp2, ...).

Labels are YOLO rows `class xc yc w h`, normalized; while an image is augmented here they are `class x1 y1 x2 y2` in
pixels, normalized again at the end. Every random draw of a sample comes from a generator seeded by (seed, epoch,
index): a batch is the same whatever the number of workers, and a resumed run sees the data of an uninterrupted one.
"""
import argparse
import glob
import hashlib
import http.client
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
import textwrap
import time
import urllib.error
import urllib.request
import zipfile
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

cv2.setNumThreads(0)  # OpenCV's own threads fight with the loader's worker processes
IMAGE_EXTS = {'.bmp', '.dng', '.jpeg', '.jpg', '.mpo', '.png', '.tif', '.tiff', '.webp', '.pfm'}
VIDEO_EXTS = {'.asf', '.avi', '.gif', '.m4v', '.mkv', '.mov', '.mp4', '.mpeg', '.mpg', '.ts', '.wmv'}
CACHE_VERSION = 1
COORD_TOLERANCE = 0.01  # normalized coordinates up to 1% outside [0, 1] are clipped, further out is an error
COCO_NAMES = ('person, bicycle, car, motorcycle, airplane, bus, train, truck, boat, traffic light, fire hydrant, '
    'stop sign, parking meter, bench, bird, cat, dog, horse, sheep, cow, elephant, bear, zebra, giraffe, backpack, '
    'umbrella, handbag, tie, suitcase, frisbee, skis, snowboard, sports ball, kite, baseball bat, baseball glove, '
    'skateboard, surfboard, tennis racket, bottle, wine glass, cup, fork, knife, spoon, bowl, banana, apple, sandwich, '
    'orange, broccoli, carrot, hot dog, pizza, donut, cake, chair, couch, potted plant, bed, dining table, toilet, tv, '
    'laptop, mouse, remote, keyboard, cell phone, microwave, oven, toaster, sink, refrigerator, book, clock, vase, '
    'scissors, teddy bear, hair drier, toothbrush').split(', ')
PALETTE = [tuple(int(h[i:i + 2], 16) for i in (4, 2, 0)) for h in (  # BGR, the original's 20 colours
    'FF3838', 'FF9D97', 'FF701F', 'FFB21D', 'CFD231', '48F90A', '92CC17', '3DDB86', '1A9334', '00D4BB',
    '2C99A8', '00C2FF', '344593', '6473FF', '0018EC', '8438FF', '520085', 'CB38FF', 'FF95C8', 'FF37C7')]
# YOLOv5's augmentations: hyp.scratch-low and its hardcoded albumentations. In train.py's HYP, --hyp overrides them.
AUG = dict(hsv_h=0.015, hsv_s=0.7, hsv_v=0.4,                                  # colour gains (fractions)
           degrees=0.0, translate=0.1, scale=0.5, shear=0.0, perspective=0.0,  # geometry
           flipud=0.0, fliplr=0.5, mosaic=1.0, mixup=0.0,                      # probabilities
           blur=0.01, median_blur=0.01, to_gray=0.01, clahe=0.01,              # probabilities (YOLOv5's albumentations)
           crop=0.0, brightness_contrast=0.0, gamma=0.0, jpeg=0.0)


# ---------------------------------------------------------------------------------------------- boxes
def xywh2xyxy(x):
    cat = torch.cat if isinstance(x, torch.Tensor) else np.concatenate
    return cat((x[..., :2] - x[..., 2:4] / 2, x[..., :2] + x[..., 2:4] / 2), -1)


def xyxy2xywh(x):
    cat = torch.cat if isinstance(x, torch.Tensor) else np.concatenate
    return cat(((x[..., :2] + x[..., 2:4]) / 2, x[..., 2:4] - x[..., :2]), -1)


def letterbox(img, new_shape=640, color=(114, 114, 114), auto=True, scaleup=True, stride=32):
    """Resize keeping the aspect ratio, then pad to new_shape (h, w) (with auto, only to the next multiple of stride).
    Returns the image, the scale ratio and the (left, top) padding (floats)."""
    h, w = img.shape[:2]
    new_h, new_w = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    r = min(new_h / h, new_w / w, math.inf if scaleup else 1.0)  # scaleup=False (val): never enlarges
    unpad_w, unpad_h = int(round(w * r)), int(round(h * r))
    dw, dh = new_w - unpad_w, new_h - unpad_h
    dw, dh = (dw % stride / 2, dh % stride / 2) if auto else (dw / 2, dh / 2)  # auto: pad only up to the stride
    if (w, h) != (unpad_w, unpad_h):
        img = cv2.resize(img, (unpad_w, unpad_h))
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return img, r, (dw, dh)


def to_tensor(img):
    """A BGR image (h, w, 3) -> the model's RGB (3, h, w) uint8 tensor, channels-last: convolutions' fastest layout."""
    return torch.from_numpy(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)


# ---------------------------------------------------------------------------------------------- files and labels
def find_images(source, split='train'):
    """Image paths from a folder, a .txt list of paths, a dataset root holding images/<split>/, or a list of these."""
    if isinstance(source, (list, tuple)):
        return sorted({f for src in source for f in find_images(src, split)})
    p = Path(source)
    if p.is_dir() and (p / 'images').is_dir():  # dataset root: pick the split, else the only one there
        splits = sorted(d.name for d in (p / 'images').iterdir() if d.is_dir())
        wanted = [s for s in splits if s.startswith(split)] or (splits if len(splits) == 1 else [])
        if not wanted:
            raise FileNotFoundError(f'{p}: no images/{split}* folder (found: {", ".join(splits) or "none"})')
        p = p / 'images' / wanted[0]
    if p.is_dir():
        files = glob.glob(str(p / '**' / '*.*'), recursive=True)
    elif p.suffix == '.txt' and p.is_file():  # one path a line, relative to the list file
        files = [x if os.path.isabs(x) else str(p.parent / x) for x in map(str.strip, p.read_text().splitlines()) if x]
    else:
        raise FileNotFoundError(f'{source}: not a data YAML, a dataset root, a folder of images or a .txt list')
    files = sorted(f for f in files if Path(f).suffix.lower() in IMAGE_EXTS)
    if not files:
        raise FileNotFoundError(f'{source}: no images found')
    return files


def label_path(img_path):
    """.../images/x/a.jpg -> .../labels/x/a.txt (the last /images/ only)."""
    head, sep, tail = img_path.rpartition(f'{os.sep}images{os.sep}')
    return os.path.splitext(f'{head}{os.sep}labels{os.sep}{tail}' if sep else img_path)[0] + '.txt'


def read_labels(path):
    """Checked label rows (k, 5) float32 (none without a label file) and warnings naming file and line. A row is a box
    `class xc yc w h` or a polygon `class x1 y1 x2 y2 ...` (COCO segments), read as the box around its points. A
    malformed row raises ValueError: its image is left out (as in the original) lest its objects train as background."""
    rows, msgs = [], []
    for n, line in enumerate(Path(path).read_text().splitlines() if os.path.isfile(path) else [], 1):
        if not line.split():
            continue
        try:
            v = np.array([float(x) for x in line.split()])
        except ValueError:
            raise ValueError(f'{path}:{n}: not numbers: {line.strip()[:60]!r}') from None
        polygon = len(v) >= 7 and len(v) % 2 == 1
        if len(v) != 5 and not polygon:
            raise ValueError(f'{path}:{n}: {len(v)} numbers: a row is class xc yc w h, or class and 3+ x y points')
        if not (v[0] >= 0 and v[0] % 1 == 0):  # (nan and inf fail too)
            raise ValueError(f'{path}:{n}: class {v[0]:g} is not a non-negative integer')
        xy, outside = v[1:], (v[1:] < 0) | (v[1:] > 1)
        if not ((xy >= -COORD_TOLERANCE) & (xy <= 1 + COORD_TOLERANCE)).all():
            raise ValueError(f'{path}:{n}: coordinates not normalized to [0, 1]: {line.strip()[:60]}')
        if outside.any():
            msgs.append(f'{path}:{n}: {" ".join(f"{x:g}" for x in xy[outside])} clipped to [0, 1]')
            xy = xy.clip(0, 1)
        if polygon:
            lo, hi = xy.reshape(-1, 2).min(0), xy.reshape(-1, 2).max(0)
            xy = np.concatenate(((lo + hi) / 2, hi - lo))
        if xy[2] <= 0 or xy[3] <= 0:
            raise ValueError(f'{path}:{n}: width and height must be positive')
        rows.append([v[0], *xy])
    labels = np.array(rows, np.float32).reshape(-1, 5)
    if len({r.tobytes() for r in labels}) < len(labels):  # (np.unique is slow enough to matter on 100k files)
        _, first = np.unique(labels, axis=0, return_index=True)
        msgs.append(f'{path}: {len(labels) - len(first)} duplicate rows removed')
        labels = labels[np.sort(first)]
    return labels, msgs


def _scan_one(args):
    """(path, (w, h) as decoded (EXIF rotation applied), labels, warnings) of an image; None, None if corrupt."""
    img, lab = args
    try:
        with Image.open(img) as im:
            im.verify()  # (after it the pixels are unusable, the header still is)
            w, h = im.size[::-1] if im.getexif().get(274) in (5, 6, 7, 8) else im.size  # EXIF: turned 90 degrees
        if w < 10 or h < 10:
            raise ValueError(f'image size {w}x{h} is smaller than 10 pixels')
        with open(img, 'rb') as f:
            f.seek(-2, 2)
            truncated = Path(img).suffix.lower() in ('.jpg', '.jpeg') and f.read() != b'\xff\xd9'
        if truncated and cv2.imread(img) is None:  # a JPEG without its end marker is kept if it still decodes
            raise ValueError('truncated JPEG that does not decode')
        labels, msgs = read_labels(lab)
    except Exception as e:  # PIL raises many kinds for a corrupt file
        return img, None, None, [f'{img}: ignoring corrupt image/label: {e}']
    return img, (w, h), labels, [f'{img}: truncated JPEG, it decodes and is kept'] * truncated + msgs


def files_hash(paths):
    stats = [os.stat(p) if os.path.exists(p) else None for p in paths]
    text = ''.join(f'{p}|{s.st_size if s else -1}|{s.st_mtime_ns if s else -1}\n' for p, s in zip(paths, stats))
    return hashlib.sha256(text.encode()).hexdigest()


def available_memory():
    """Bytes the system can still give (Linux's MemAvailable); None where it does not say."""
    meminfo = Path('/proc/meminfo')
    return int(re.search(r'MemAvailable:\s+(\d+)', meminfo.read_text())[1]) * 1024 if meminfo.exists() else None


def load_labels(img_files, nc, prefix='', single_cls=False):
    """Checks every image and label file, with a cache beside the labels (labels/<split>.cache) that is
    reused while no file changed. Returns kept image paths, their (w, h) sizes and label arrays."""
    label_files = [label_path(f) for f in img_files]
    cache_path = Path(label_files[0]).parent.with_suffix('.cache')
    key = files_hash(img_files + label_files)
    try:
        c = np.load(cache_path, allow_pickle=False)
        if int(c['version']) != CACHE_VERSION or str(c['hash']) != key:
            raise ValueError('stale cache')
        files, sizes, msgs, n_corrupt = list(c['files']), c['sizes'], list(c['msgs']), int(c['corrupt'])
        labels, how = np.split(c['labels'], np.cumsum(c['counts'])[:-1]), 'Cached'
    except Exception:  # no cache, stale or unreadable: scan again
        with multiprocessing.Pool(min(8, os.cpu_count())) as pool:  # processes: the checks are Python, threads wait
            results = pool.map(_scan_one, zip(img_files, label_files), chunksize=64)  # on each other (the GIL)
        kept = [r for r in results if r[1] is not None]
        files, sizes, labels = [r[0] for r in kept], np.array([r[1] for r in kept]).reshape(-1, 2), [r[2] for r in kept]
        msgs, n_corrupt, how = [m for r in results for m in r[3]], len(results) - len(kept), 'Scanned'
        try:  # the write bits, not os.access: as root os.access says yes even to a read-only dataset
            if not os.stat(cache_path.parent).st_mode & 0o222:
                raise PermissionError(13, 'folder is read-only')
            tmp = f'{cache_path}.{os.getpid()}.tmp.npz'  # one per process: DDP ranks may scan at the same time
            np.savez(tmp, version=CACHE_VERSION, hash=key, files=np.array(files), sizes=sizes, msgs=np.array(msgs, str),
                     labels=np.concatenate(labels or [np.zeros((0, 5), np.float32)]), counts=[len(x) for x in labels],
                     corrupt=n_corrupt)
            os.replace(tmp, cache_path)
        except OSError as e:
            print(f'{prefix}WARNING: cache {cache_path} not written ({e.strerror})', file=sys.stderr)
    for m in msgs:
        print(f'{prefix}WARNING: {m}', file=sys.stderr)
    print(f'{prefix}{how} {Path(label_files[0]).parent}: {len(files)} images, {sum(len(x) == 0 for x in labels)} '
          f'backgrounds, {n_corrupt} corrupt, {sum(len(x) for x in labels)} instances')
    for f, lb in zip(files, labels):
        lb[:, 0] *= not single_cls  # --single-cls: every object is class 0
        if len(lb) and lb[:, 0].max() >= nc:
            raise ValueError(f'{label_path(f)}: class {int(lb[:, 0].max())} is out of range: the dataset has '
                             f'{nc} classes (0-{nc - 1}); fix the label or give the right --names')
    if not files:
        raise ValueError(f'{prefix}no usable images in {Path(img_files[0]).parent}')
    return files, sizes, labels


def read_names(path=None):
    names = list(COCO_NAMES) if path is None else [x.strip() for x in Path(path).read_text().splitlines() if x.strip()]
    if not names:
        raise ValueError(f'{path}: no class names (one per line)')
    return names


# ---------------------------------------------------------------------------------------------- data YAMLs, downloads
def _uncomment(line):
    """The line without its comment: a # at the start or after a blank, outside quotes."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in '\'"' and (i == 0 or line[i - 1] in ' \t[,:'):
            quote = c
        elif c == '#' and (i == 0 or line[i - 1] in ' \t'):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(text, where):
    """A quoted or plain scalar, or a flow list [a, 'b c'] of them; plain ones may be null, int or float."""
    s = text.strip()
    if s[:1] == '[' and s[-1:] == ']':
        return [_scalar(x, where) for x in re.findall(r"""'(?:[^']|'')*'|"(?:[^"\\]|\\.)*"|[^,\s][^,]*""", s[1:-1])]
    if len(s) > 1 and s[0] == s[-1] and s[0] in '\'"':
        return s[1:-1].replace("''", "'") if s[0] == "'" else json.loads(s)
    if s[:1] and s[0] in '[]{}&*!%@`\'"|>':
        raise ValueError(f'{where}: {s[:40]!r} is not in the YAML read here (no flow mappings, anchors, tags)')
    if re.fullmatch(r'[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?', s):
        return int(s) if re.fullmatch(r'[-+]?\d+', s) else float(s)
    return None if s in ('', '~', 'null', 'Null', 'NULL') else s


def _key_value(line, where):
    m = re.fullmatch(r"""\s*('[^']*'|"[^"]*"|[^\s'"#:][^:#]*?)\s*:(?:\s+(.*))?""", line)
    if not m:
        raise ValueError(f'{where}: not a `key: value` line: {line.strip()[:60]!r}')
    return _scalar(m[1], where), (m[2] or '').strip()


def read_yaml(path):
    """The YAML that dataset files use: `key: value` lines with plain or quoted scalars and flow lists, block
    lists (- a) and one nested mapping level (names: 0: person; or an export service's roboflow: block, read and
    unused), block scalars (| and >) and comments. Anything else is an error naming the file and line."""
    lines, out = Path(path).read_text().splitlines(), {}
    tops = [i for i, x in enumerate(lines) if i == 0 or x.strip() and x[0] not in ' \t' and not x.startswith('- ')]
    for i, end in zip(tops, tops[1:] + [len(lines)]):
        line, where = _uncomment(lines[i]), f'{path}:{i + 1}'
        block = [(f'{path}:{j + 1}', lines[j]) for j in range(i + 1, end)]  # the lines under this one: a nested block
        if line.strip() in ('', '---', '...'):
            continue
        if line[0] in ' \t':  # only the first line can be: any other is in the block of the line above
            raise ValueError(f'{where}: unexpected indentation')
        key, value = _key_value(line, where)
        if value.rstrip('-+') in ('|', '>'):  # a block scalar: the text of the lines under it
            text = textwrap.dedent('\n'.join(text for _, text in block)).strip('\n')
            out[key] = text + '\n' if value[0] == '|' else ' '.join(text.split())
            continue
        items, mapping = [], {}  # else a scalar, or a block list or a mapping one level deep
        block = [(where, _uncomment(text)) for where, text in block if _uncomment(text).strip()]
        for where, text in block:
            if len(text) - len(text.lstrip()) != len(block[0][1]) - len(block[0][1].lstrip()) or value:
                raise ValueError(f'{where}: ' + ('unexpected indentation' if value else 'one nested level only'))
            if text.strip()[:2] in ('- ', '-'):
                items.append(_scalar(text.strip()[1:], where))
            else:
                k, v = _key_value(text, where)
                mapping[k] = _scalar(v, where)
        if items and mapping:
            raise ValueError(f'{path}: {key}: a list and a mapping mixed')
        out[key] = _scalar(value, where) if value else items or mapping or None
    return out


DATASETS_DIR = Path(__file__).resolve().parent.parent / 'datasets'  # ../datasets beside the repository, as the original
ASSETS = 'https://github.com/ultralytics/assets/releases/download/v0.0.0/'
KNOWN_DATA = {  # the original's data YAMLs that `--data coco.yaml` finds without a file: (url, extract into) pairs
    'coco128': dict(path='coco128', train='images/train2017', val='images/train2017',
                    download=[(ASSETS + 'coco128.zip', '.')]),
    'coco': dict(path='coco', train='train2017.txt', val='val2017.txt',  # not test2017.zip (7 GB): training needs none
                 download=[(ASSETS + 'coco2017labels.zip', '.'), ('http://images.cocodataset.org/zips/train2017.zip',
                           'coco/images'), ('http://images.cocodataset.org/zips/val2017.zip', 'coco/images')]),
}


def data_spec(data):
    """--data as {'train': sources, 'val': sources, 'names': list or None}, from a data YAML (paths resolved by
    _resolve, its dataset downloaded when missing), a dataset known by name (coco128, coco: fetched into ../datasets),
    or a dataset root, an image folder or a .txt list (validated on its val split, or its only one, or its images)."""
    p = Path(data)
    if p.stem in KNOWN_DATA and p.suffix in ('.yaml', '.yml', '') and not p.exists():
        cfg, base = dict(KNOWN_DATA[p.stem], names=COCO_NAMES), DATASETS_DIR
    elif p.suffix in ('.yaml', '.yml'):
        if not p.is_file():
            raise FileNotFoundError(f'{data}: no such file (known without one: {", ".join(KNOWN_DATA)})')
        cfg, base = read_yaml(p), p.parent
    else:
        return dict(train=str(data), val=str(data), names=None)
    names = cfg.get('names')
    if isinstance(names, dict):  # {index: name}
        names = [names.get(i, f'class{i}') for i in range(max(names) + 1)] if names else None
    if names is not None and cfg.get('nc', len(names)) != len(names):
        raise ValueError(f'{data}: nc is {cfg["nc"]} but {len(names)} names are given')
    names = names or ([f'class{i}' for i in range(cfg['nc'])] if cfg.get('nc') else None)
    root = base / str(cfg.get('path') or '')  # relative to the YAML's folder; an absolute path stays absolute
    markers = [done_marker(url, dest) for url, dest in _zips(cfg.get('download'), root, base)]
    if 0 < sum(m.exists() for m in markers) < len(markers):  # a download that stopped halfway goes on first
        _download_dataset(data, cfg['download'], root, base)
    for attempt in range(2):  # the second after the download
        try:
            return dict(train=_resolve(cfg, 'train', root, base), val=_resolve(cfg, 'val', root, base), names=names)
        except FileNotFoundError:
            if attempt or not cfg.get('download'):
                raise
            _download_dataset(data, cfg['download'], root, base)


def _resolve(cfg, split, root, base):
    """The sources of a split: each relative to `path`, else the YAML's folder; `../x` also as `x` (the form of
    export services, whose data.yaml sits in the dataset root beside train/ and valid/)."""
    found = []
    for entry in cfg.get(split) if isinstance(cfg.get(split), list) else [cfg.get(split)] * bool(cfg.get(split)):
        tried = [root / entry] + [root / entry[3:]] * entry.startswith('../') + [base / entry]
        found += [str(next((t for t in tried if t.exists()), ''))]
        if not found[-1]:
            raise FileNotFoundError(f'{split}: {entry} not found; tried ' + ', '.join(str(t.resolve()) for t in tried))
    if not found:
        raise ValueError(f'no {split}: in the data YAML')
    return found


def _download_dataset(data, download, root, base):
    """A missing dataset, fetched: the zips of a known dataset or of a YAML `download: URL`. A download: that is a
    Python script is never run (the original exec()s it): the error names what to fetch and where to put it."""
    if isinstance(download, str) and not re.fullmatch(r'https?://\S+\.zip', download.strip()):
        urls = ', '.join(re.findall(r'https?://[^\s\'"]+', download)) or 'the dataset'
        raise FileNotFoundError(f'{data}: dataset not found, and its download: is a script, which is never run '
                                f'here. Fetch {urls} by hand and unpack it to {root.resolve()}')
    errors = []
    for url, dest in _zips(download, root, base):
        try:
            download_zip(url, dest)
        except FileNotFoundError as e:
            errors.append(str(e))
    if errors:
        raise FileNotFoundError(f'{data}: dataset not found and not downloaded:\n  ' + '\n  '.join(errors))


def _zips(download, root, base):
    """The (url, folder) pairs of a download: a known dataset's zips, or a YAML's URL of one, into path's parent."""
    if isinstance(download, str):
        url = download.strip()
        return [(url, root.parent.resolve())] if re.fullmatch(r'https?://\S+\.zip', url) else []
    return [(url, base / dest) for url, dest in download or []]


def download(url, path):
    """url fetched to path with progress (bytes, rate, ETA), resuming an interrupted path.part (HTTP Range); path
    appears only when complete. YOLO_MIRROR (an http(s) URL or a folder) serves the same file name instead: for
    mirrors, and for machines without internet. Raises FileNotFoundError naming the URL and where to put the file."""
    path, name, mirror = Path(path), url.rsplit('/', 1)[-1], os.getenv('YOLO_MIRROR', '')
    src, part = f'{mirror.rstrip("/")}/{name}' if mirror else url, Path(f'{path}.part')
    print(f'Downloading {src} to {path} ...', file=sys.stderr)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, part) if mirror and not re.match(r'https?://', mirror) else _fetch(src, part)
        os.replace(part, path)
    except (OSError, ValueError, http.client.HTTPException) as e:
        hint = '' if mirror else f', or set YOLO_MIRROR to a folder or an http(s) URL that serves {name}'
        raise FileNotFoundError(f'{src}: download failed ({e}). Download it by hand and put it at {path.resolve()}'
                                + hint) from None


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


def done_marker(url, dest):  # the file that says the zip at url is in dest, whole
    return dest / f'.{url.rsplit("/", 1)[-1]}.done'


def download_zip(url, dest):
    """A zip fetched into dest (or put there by hand), checked, extracted into a temporary folder and moved into
    place, then deleted: a crash never leaves a half dataset that looks whole. done_marker() then says it is."""
    name = url.rsplit('/', 1)[-1]
    zip_path, tmp, done = dest / name, dest / f'.{name}.tmp', done_marker(url, dest)
    if done.exists():
        return
    if not zip_path.exists():
        download(url, zip_path)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(zip_path) as z:
            print(f'Unzipping {zip_path} ...', file=sys.stderr)
            z.extractall(tmp)  # which checks every member's CRC
    except zipfile.BadZipFile as e:
        zip_path.unlink()
        shutil.rmtree(tmp, ignore_errors=True)
        raise FileNotFoundError(f'{url}: not a valid zip ({e}); deleted, nothing extracted') from None
    shutil.copytree(tmp, dest, dirs_exist_ok=True, copy_function=os.replace)  # moved in, merged with folders that exist
    shutil.rmtree(tmp)
    done.touch()
    zip_path.unlink()


# ---------------------------------------------------------------------------------------------- augmentations
def random_matrix(rng, hyp, shape, size):
    """A random affine (or perspective) 3x3 matrix in hyp's ranges, shape (h, w) -> size (w, h), and its scale."""
    C, P, R, S, T = (np.eye(3) for _ in range(5))  # centre, perspective, rotation and scale, shear, translation
    C[0, 2], C[1, 2] = -shape[1] / 2, -shape[0] / 2
    P[2, 0], P[2, 1] = rng.uniform(-hyp['perspective'], hyp['perspective'], 2)
    s = rng.uniform(1 - hyp['scale'], 1 + hyp['scale'])
    R[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=rng.uniform(-hyp['degrees'], hyp['degrees']), scale=s)
    S[0, 1], S[1, 0] = np.tan(np.radians(rng.uniform(-hyp['shear'], hyp['shear'], 2)))
    T[0, 2], T[1, 2] = rng.uniform(0.5 - hyp['translate'], 0.5 + hyp['translate'], 2) * size  # re-centred
    return T @ S @ R @ P @ C, s


def warp(img, labels, M, s, size, origin=(0, 0)):
    """img (from origin (x, y) on, of an image M maps to size (w, h)) and its pixel xyxy labels warped; boxes kept:
    > 2 px wide and high, > 10% of their area left (s: M's scale), aspect < 100."""
    if M[2, :2].any():  # (only with origin 0)
        img = cv2.warpPerspective(img, M, size, borderValue=(114, 114, 114))
    elif (M != np.eye(3)).any():  # M's inverse moved by whole pixels: bit for bit the whole image's warp
        iM = cv2.invertAffineTransform(M[:2]) - ((0, 0, origin[0]), (0, 0, origin[1]))
        img = cv2.warpAffine(img, iM, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=(114, 114, 114))
    xy = np.hstack((labels[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(-1, 2), np.ones((len(labels) * 4, 1)))) @ M.T
    xy = (xy[:, :2] / xy[:, 2:3]).reshape(-1, 4, 2)  # (box, corner, x y)
    new = np.concatenate((xy.min(1), xy.max(1)), 1).clip(0, size * 2)
    (w1, h1), (w2, h2) = (labels[:, 3:] * s - labels[:, 1:3] * s).T, (new[:, 2:] - new[:, :2]).T  # before, after
    aspect = np.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    keep = (w2 > 2) & (h2 > 2) & (w2 * h2 / (w1 * h1 + 1e-16) > 0.1) & (aspect < 100)
    labels = labels[keep]
    labels[:, 1:] = new[keep]
    return img, labels


def augment_hsv(img, rng, hgain=0.5, sgain=0.5, vgain=0.5):
    """Random gains on hue, saturation and value; BGR in, RGB (the model's order) out: the loader's one change of
    colour order (all it does with gains of 0)."""
    if not (hgain or sgain or vgain):
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    r = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    x = np.arange(256.0)
    luts = (x * r[0]) % 180, np.clip(x * r[1], 0, 255), np.clip(x * r[2], 0, 255)  # OpenCV's hue: 0-179
    hsv = [cv2.LUT(c, t.astype(np.uint8)) for c, t in zip(cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV)), luts)]
    return cv2.cvtColor(cv2.merge(hsv), cv2.COLOR_HSV2RGB)  # (planes: faster than a 3-channel LUT)


def random_resized_crop(img, labels, rng, size, scale=(0.8, 1.0), ratio=(0.9, 1.11)):
    """A crop of random area and aspect ratio, resized to size x size; boxes clipped to it."""
    h, w = img.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            break
    else:  # fall back to a centre crop
        cw = ch = min(w, h)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
    img = cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (size, size))
    labels = labels.copy()
    labels[:, [1, 3]] = ((labels[:, [1, 3]] - x0) * size / cw).clip(0, size)
    labels[:, [2, 4]] = ((labels[:, [2, 4]] - y0) * size / ch).clip(0, size)
    return img, labels[(labels[:, 3] - labels[:, 1] >= 1) & (labels[:, 4] - labels[:, 2] >= 1)]


def photometric(img, rng, hyp):
    """The pixel-only part of the albumentations stack YOLOv5 applies, with its parameter ranges."""
    if rng.random() < hyp['blur']:
        k = int(rng.choice([3, 5, 7]))
        img = cv2.blur(img, (k, k))
    if rng.random() < hyp['median_blur']:
        img = cv2.medianBlur(img, int(rng.choice([3, 5, 7])))
    if rng.random() < hyp['to_gray']:
        img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if rng.random() < hyp['clahe']:  # equalize the lightness channel only
        lab = cv2.cvtColor(img, cv2.COLOR_BGR2LAB)
        lab[:, :, 0] = cv2.createCLAHE(clipLimit=rng.uniform(1, 4), tileGridSize=(8, 8)).apply(lab[:, :, 0])
        img = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
    if rng.random() < hyp['brightness_contrast']:
        alpha, beta = 1 + rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2) * 255
        img = cv2.LUT(img, np.clip(np.arange(256) * alpha + beta, 0, 255).astype(np.uint8))  # no abs(): 0 stays 0
    if rng.random() < hyp['gamma']:
        img = cv2.LUT(img, (255 * (np.arange(256) / 255) ** rng.uniform(0.8, 1.2)).clip(0, 255).astype(np.uint8))
    if rng.random() < hyp['jpeg']:
        ok, buf = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 101))])
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return img


def mixup(img, labels, img2, labels2, rng):
    r = rng.beta(32.0, 32.0)  # mixing ratio, close to 0.5
    return (img * r + img2 * (1 - r)).astype(np.uint8), np.concatenate((labels, labels2))


# ---------------------------------------------------------------------------------------------- dataset
class YOLODataset(torch.utils.data.Dataset):
    def __init__(self, source, img_size=640, batch_size=16, augment=False, hyp=None, rect=False, stride=32,
                 pad=0.0, cache=None, nc=80, seed=0, split='train', single_cls=False, prefix=''):
        self.img_size, self.augment, self.hyp, self.rect, self.seed = img_size, augment, hyp, rect, seed
        self.batch_size = batch_size  # with rect, a loader batch shares a shape
        self.epoch = 0  # ds[i]'s, in its random seed (the loader passes (epoch, i))
        self.files, self.sizes, self.labels = load_labels(find_images(source, split), nc, prefix, single_cls)
        self.mosaic, self.warned = augment and not rect, set()  # warned: files that stopped decoding
        if rect:  # sorted by aspect ratio, a letterbox shape per batch: less padding, YOLOv5's val results
            order = np.argsort(self.sizes[:, 1] / self.sizes[:, 0])
            self.files, self.labels = [self.files[i] for i in order], [self.labels[i] for i in order]
            self.sizes, self.batch_index = self.sizes[order], np.arange(len(order)) // batch_size
            ar = self.sizes[:, 1] / self.sizes[:, 0]  # h / w
            shapes = [[a.max(), 1] if a.max() < 1 else [1, 1 / a.min()] if a.min() > 1 else [1, 1]
                      for a in np.split(ar, range(batch_size, len(ar), batch_size))]  # the ratios of each batch
            self.batch_shapes = np.ceil(np.array(shapes) * img_size / stride + pad).astype(int) * stride
        self.shapes = np.ceil(self.sizes * (img_size / self.sizes.max(1, keepdims=True))).astype(int)  # as loaded
        need, free = 3 * self.shapes.prod(1).sum(), available_memory()
        if cache == 'ram' and need > (free or math.inf):  # refused before filling memory for minutes
            raise ValueError(f'--cache ram needs {need / 1e9:.1f} GB for {len(self.files)} images at --img '
                             f'{img_size}, but {free / 1e9:.1f} GB are free: leave out --cache, or lower --img')
        self.need, self.keep, self.ram = need, cache == 'ram', [None] * len(self.files)
        if cache == 'ram':
            with ThreadPool(min(8, os.cpu_count() * 2)) as pool:
                self.ram = pool.map(self.load_image, range(len(self.files)))
            mb = sum(x[0].nbytes for x in self.ram if x[0] is not None) / 2 ** 20
            print(f'{prefix}Cached {len(self.files)} images in RAM ({mb:.0f} MB)')

    def __len__(self):
        return len(self.files)

    def load_image(self, i):
        """Image i with its long side img_size, and its original (h, w); (None, None) if unreadable. Training decodes
        a JPEG it shrinks 2x or more at reduced size (2x faster; ~1 grey level off a full decode)."""
        if self.ram[i] is not None:
            return self.ram[i]
        f = max(k for k in (1, 2, 4, 8) if k * self.img_size <= self.sizes[i].max() or k == 1) if self.augment else 1
        img = cv2.imread(self.files[i], getattr(cv2, f'IMREAD_REDUCED_COLOR_{f}') if f > 1 else cv2.IMREAD_COLOR)
        if img is None:
            return None, None
        w0, h0 = self.sizes[i] if f > 1 else img.shape[1::-1]
        r = self.img_size / max(w0, h0)
        size = math.ceil(w0 * r), math.ceil(h0 * r)
        if img.shape[1::-1] != size:  # INTER_AREA to shrink without augmentation, as YOLOv5 (it changes mAP a little)
            img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR if self.augment or r > 1 else cv2.INTER_AREA)
        if self.keep:
            self.ram[i] = img, (h0, w0)
        return img, (h0, w0)

    def pixel_labels(self, i, w, h, padw, padh):
        """Image i's labels: class, pixel xyxy in the image of size (w, h) placed at (padw, padh)."""
        lb = self.labels[i].copy()
        lb[:, 1:] = xywh2xyxy(lb[:, 1:]) * (w, h, w, h) + (padw, padh, padw, padh)
        return lb

    def load_mosaic(self, index, rng):
        """Four images around a random centre of a 2s x 2s canvas, warped back to s x s. Only the part the warp reads
        is made, and only the images in it decoded."""
        s = self.img_size
        xc, yc = (int(v) for v in rng.uniform(s // 2, 2 * s - s // 2, 2))
        indices = [index] + [int(i) for i in rng.integers(0, len(self), 3)]
        rng.shuffle(indices)
        M, scale = random_matrix(rng, self.hyp, (2 * s, 2 * s), (s, s))
        x0, y0, x1, y1 = 0, 0, 2 * s, 2 * s
        if not self.hyp['perspective']:  # the box where the output's corners come from, + 1 px (else all)
            xy = cv2.invertAffineTransform(M[:2]) @ [[0, s, 0, s], [0, 0, s, s], [1, 1, 1, 1]]
            x0, y0 = (np.floor(xy.min(1)).astype(int) - 1).clip(0, 2 * s - 1)
            x1, y1 = (np.ceil(xy.max(1)).astype(int) + 2).clip(1, 2 * s)
        canvas, labels = np.full((y1 - y0, x1 - x0, 3), 114, np.uint8), []
        for k, i in enumerate(indices):  # image k: left of the centre for even k, above it for k < 2
            w, h = self.shapes[i]
            x, y = (xc - w if k % 2 == 0 else xc) - x0, (yc - h if k < 2 else yc) - y0  # its top left, in the part
            if x < x1 - x0 and y < y1 - y0 and x + w > 0 and y + h > 0:
                img, _, i = self.load_checked(i, rng)
                img = img if img.shape[1::-1] == (w, h) else cv2.resize(img, (w, h))  # (a substitute)
                canvas[max(y, 0):y + h, max(x, 0):x + w] = img[max(-y, 0):y1 - y0 - y, max(-x, 0):x1 - x0 - x]
            labels.append(self.pixel_labels(i, w, h, x + x0, y + y0))
        labels = np.concatenate(labels)
        labels[:, 1:] = labels[:, 1:].clip(0, 2 * s)
        return warp(canvas, labels, M, scale, (s, s), (x0, y0))

    def load_checked(self, i, rng):
        """load_image, but a file that fails to decode is reported once and replaced: image, original (h, w), index."""
        for _ in range(100):
            img, hw0 = self.load_image(i)
            if img is not None:
                return img, hw0, i
            if self.files[i] not in self.warned:
                self.warned.add(self.files[i])
                print(f'WARNING: {self.files[i]}: cannot decode image, skipped', file=sys.stderr)
            i = int(rng.integers(0, len(self)))
        raise RuntimeError('no readable image found')

    def __getitem__(self, index):
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)  # (epoch, index) from EpochSampler
        rng = np.random.default_rng([self.seed, epoch, index])
        hyp, to_orig = self.hyp, None
        if self.mosaic and rng.random() < hyp['mosaic']:
            img, labels = self.load_mosaic(index, rng)
            if rng.random() < hyp['mixup']:
                img, labels = mixup(img, labels, *self.load_mosaic(int(rng.integers(0, len(self))), rng), rng)
        else:
            shape = self.batch_shapes[self.batch_index[index]] if self.rect else self.img_size  # before a substitute
            img, (h0, w0), index = self.load_checked(index, rng)
            h, w = img.shape[:2]
            img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
            to_orig = (h0, w0), (h / h0 * ratio, pad)  # for scale_boxes, back to the original
            labels = self.pixel_labels(index, ratio * w, ratio * h, *pad)
            if self.augment:
                img, labels = warp(img, labels, *random_matrix(rng, hyp, img.shape, img.shape[1::-1]), img.shape[1::-1])
        if self.augment:
            if rng.random() < hyp['crop']:
                img, labels = random_resized_crop(img, labels, rng, self.img_size)
            img = photometric(img, rng, hyp)
        # the one change of colour order: BGR (OpenCV's) before, RGB after
        img = augment_hsv(img, rng, *[hyp[k] if self.augment else 0 for k in ('hsv_h', 'hsv_s', 'hsv_v')])
        h, w = img.shape[:2]
        labels = labels.astype(np.float32)
        labels[:, 1:] = xyxy2xywh(labels[:, 1:].clip(0, (w, h, w, h))) / (w, h, w, h)
        labels = labels[(labels[:, 3] > 1e-3) & (labels[:, 4] > 1e-3)]
        if self.augment:
            if rng.random() < hyp['flipud']:
                img, labels[:, 2] = cv2.flip(img, 0), 1 - labels[:, 2]
            if rng.random() < hyp['fliplr']:
                img, labels[:, 1] = cv2.flip(img, 1), 1 - labels[:, 1]
        labels = np.pad(labels, ((0, 0), (1, 0)))  # column 0: its image in the batch, set by collate
        return torch.from_numpy(img).permute(2, 0, 1), torch.from_numpy(labels), self.files[index], to_orig


def collate(batch):
    imgs, labels, paths, to_orig = zip(*batch)
    for i, lb in enumerate(labels):
        lb[:, 0] = i  # its image in the batch
    # channels-last, copied by numpy: torch's spins on its threads, 20x slower on a busy 2-core machine
    imgs = torch.from_numpy(np.stack([im.permute(1, 2, 0).numpy() for im in imgs])).permute(0, 3, 1, 2)
    return imgs, torch.cat(labels), paths, to_orig


class EpochSampler(torch.utils.data.distributed.DistributedSampler):
    """A DistributedSampler (also for one process: set_epoch reshuffles) whose indices carry their epoch: (epoch,
    index) seeds a sample's random draws, and reaches loader workers that live for the run."""
    def __iter__(self):
        return ((self.epoch, i) for i in super().__iter__())


def create_dataloader(dataset, batch_size, workers=None, shuffle=False, rank=0, world_size=1, cpu=False):
    """workers=None: up to 8 beside a GPU; beside a CPU that computes (cpu=True), the cores its threads leave: none on
    2 cores (measured: there they slow the training steps more than they help)."""
    if workers is None:
        workers = max(os.cpu_count() // world_size - torch.get_num_threads(), 0) if cpu else 8
    sampler = EpochSampler(dataset, world_size, rank, shuffle=shuffle, seed=dataset.seed, drop_last=False)
    workers = min(os.cpu_count() // world_size, batch_size if batch_size > 1 else 0, workers)  # as the original
    # kept once decoded when all copies (one a worker) need under a tenth of the free memory: a fine-tune on a small
    # dataset would otherwise decode each image 4x an epoch
    dataset.keep |= dataset.need * max(workers, 1) * world_size < 0.1 * (available_memory() or 0)
    return torch.utils.data.DataLoader(dataset, batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                                       pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)


def set_epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)  # the sampler hands (epoch, index) to the dataset, in any worker


# ---------------------------------------------------------------------------------------------- what a run writes
def run_dir(project, name, exist_ok=False):
    """The folder of a new run: project/name, or if that exists (and not exist_ok) name2, name3, ..."""
    path, n = Path(project) / name, 2
    while path.exists() and not exist_ok:
        path, n = Path(project) / f'{name}{n}', n + 1
    return path


def draw_box(img, xyxy, label, color, thickness):
    p1, p2 = (int(xyxy[0]), int(xyxy[1])), (int(xyxy[2]), int(xyxy[3]))
    cv2.rectangle(img, p1, p2, color, thickness, cv2.LINE_AA)
    if label:
        font_thickness = max(thickness - 1, 1)
        w, h = cv2.getTextSize(label, 0, thickness / 3, font_thickness)[0]
        above = p1[1] - h >= 3  # the label sits above the box unless that leaves the image
        cv2.rectangle(img, p1, (p1[0] + w, p1[1] - h - 3 if above else p1[1] + h + 3), color, -1, cv2.LINE_AA)
        cv2.putText(img, label, (p1[0], p1[1] - 2 if above else p1[1] + h + 2), 0, thickness / 3,
                    (0, 0, 0) if sum(color) > 450 else (255, 255, 255), font_thickness, cv2.LINE_AA)


def plot_batch(imgs, labels, names, path, preds=None, max_images=16):
    """A grid of a batch with its label boxes (and predictions with confidence, if given) as a JPEG."""
    imgs, labels = imgs[:max_images].numpy(), labels.numpy()
    b, _, h, w = imgs.shape
    cols = math.ceil(b ** 0.5)
    scale = min(1.0, 1920 / (cols * max(h, w)))  # the grid is at most 1920 px wide
    th, tw = int(h * scale), int(w * scale)
    grid = np.full((math.ceil(b / cols) * th, cols * tw, 3), 255, np.uint8)
    for i in range(b):
        y0, x0 = (i // cols) * th, (i % cols) * tw
        tile = np.ascontiguousarray(cv2.resize(imgs[i].transpose(1, 2, 0)[:, :, ::-1], (tw, th)))
        boxes = [(lb[1], xywh2xyxy(lb[2:6]) * (tw, th, tw, th), names[int(lb[1])]) for lb in labels[labels[:, 0] == i]]
        if preds is not None:
            boxes += [(p[5], np.array(p[:4]) * scale, f'{names[int(p[5])]} {p[4]:.1f}') for p in preds[i].tolist()]
        for c, xyxy, text in boxes:
            draw_box(tile, xyxy, text, PALETTE[int(c) % len(PALETTE)], 1)
        grid[y0:y0 + th, x0:x0 + tw] = tile
        cv2.rectangle(grid, (x0, y0), (x0 + tw - 1, y0 + th - 1), (255, 255, 255), 2)
    cv2.imwrite(str(path), grid)


# ---------------------------------------------------------------------------------------------- command line
def number(kind, low, high=math.inf):
    """An argparse type: an int or float in [low, high]; a bad value exits (code 2) naming the flag, before any work."""
    what = ('an integer' if kind is int else 'a number') + (f' >= {low}' if high == math.inf else f' in [{low},{high}]')

    def parse(text):
        try:
            if low <= kind(text) <= high:
                return kind(text)
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(f'{text!r} is not {what}')
    return parse


def existing_file(text):  # an argparse type
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f'{text}: no such file')
    return text


def or_exit(fn, *args, **kwargs):
    """fn(*args, **kwargs), where a bad input (FileNotFoundError, ValueError) ends the program with its message."""
    try:
        return fn(*args, **kwargs)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f'ERROR: {e}')


if __name__ == '__main__':  # python data.py DATASET [--img 640] [--names FILE]: see what training sees
    p = argparse.ArgumentParser()
    p.add_argument('data')
    p.add_argument('--img', type=number(int, 32), default=640)
    p.add_argument('--batch', type=number(int, 1), default=16)
    p.add_argument('--seed', type=number(int, 0), default=0)
    p.add_argument('--names', type=existing_file, default=None)
    p.add_argument('--out', default='train_batch.jpg')
    a = p.parse_args()
    spec = or_exit(data_spec, a.data)
    names = read_names(a.names) if a.names else spec['names'] or read_names()
    ds = or_exit(YOLODataset, spec['train'], a.img, a.batch, augment=True, hyp=AUG, nc=len(names), seed=a.seed)
    imgs, labels, _, _ = collate([ds[i] for i in range(min(a.batch, len(ds)))])
    plot_batch(imgs, labels, names, a.out)
    print(f'{len(imgs)} augmented images with {len(labels)} labels written to {a.out}')
