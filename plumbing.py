"""
The plumbing under the five stages: nothing here is needed to understand YOLOv5. Read data.py, model.py, loss.py,
train.py and detect.py first; come here for how a file, a download or a picture is handled.
Owns: image and label files (their checks and cache), class names, box formats, data YAMLs (a small reader), known
datasets and downloads (mirrors, resume, zips), checkpoints on disk (the original's pickles read without its code,
atomic saves), run folders (and the torchrun restart bookkeeping), pictures (boxes, batches, charts), and the
command line (argparse types, devices, exits). It imports no file of the project.
"""
import argparse
import contextlib
import errno
import functools
import glob
import hashlib
import http.client
import importlib.util
import itertools
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_EXTS = {'.bmp', '.dng', '.jpeg', '.jpg', '.mpo', '.png', '.tif', '.tiff', '.webp', '.pfm'}
VIDEO_EXTS = {'.asf', '.avi', '.gif', '.m4v', '.mkv', '.mov', '.mp4', '.mpeg', '.mpg', '.ts', '.wmv'}
CACHE_VERSION = 2  # 2: PNG and TIFF images are no longer taken for corrupt, class indices are bounded
# more classes than any real dataset has (LVIS: 1,203): a bound on what a hostile YAML or label file can make us build
MAX_CLASSES = 100_000
COORD_TOLERANCE = 0.01  # normalized coordinates up to 1% outside [0, 1] are clipped, further out is an error
COCO_NAMES = ('person, bicycle, car, motorcycle, airplane, bus, train, truck, boat, traffic light, fire hydrant, '
    'stop sign, parking meter, bench, bird, cat, dog, horse, sheep, cow, elephant, bear, zebra, giraffe, backpack, '
    'umbrella, handbag, tie, suitcase, frisbee, skis, snowboard, sports ball, kite, baseball bat, baseball glove, '
    'skateboard, surfboard, tennis racket, bottle, wine glass, cup, fork, knife, spoon, bowl, banana, apple, sandwich, '
    'orange, broccoli, carrot, hot dog, pizza, donut, cake, chair, couch, potted plant, bed, dining table, toilet, tv, '
    'laptop, mouse, remote, keyboard, cell phone, microwave, oven, toaster, sink, refrigerator, book, clock, vase, '
    'scissors, teddy bear, hair drier, toothbrush').split(', ')
COCO91_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # of the 80 classes
PALETTE = [tuple(int(h[i:i + 2], 16) for i in (4, 2, 0)) for h in (  # BGR, the original's 20 colours
    'FF3838', 'FF9D97', 'FF701F', 'FFB21D', 'CFD231', '48F90A', '92CC17', '3DDB86', '1A9334', '00D4BB',
    '2C99A8', '00C2FF', '344593', '6473FF', '0018EC', '8438FF', '520085', 'CB38FF', 'FF95C8', 'FF37C7')]


# ---------------------------------------------------------------------------------------------- boxes
def xywh2xyxy(x):
    cat = torch.cat if isinstance(x, torch.Tensor) else np.concatenate
    return cat((x[..., :2] - x[..., 2:4] / 2, x[..., :2] + x[..., 2:4] / 2), -1)


def xyxy2xywh(x):
    cat = torch.cat if isinstance(x, torch.Tensor) else np.concatenate
    return cat(((x[..., :2] + x[..., 2:4]) / 2, x[..., 2:4] - x[..., :2]), -1)


def box_iou(a, b, eps=1e-7):
    """IoU matrix of xyxy boxes a (n, 4) and b (m, 4)."""
    (a1, a2), (b1, b2) = a[:, None].chunk(2, 2), b[None].chunk(2, 2)
    inter = (torch.min(a2, b2) - torch.max(a1, b1)).clamp(0).prod(2)
    return inter / ((a2 - a1).prod(2) + (b2 - b1).prod(2) - inter + eps)


# ---------------------------------------------------------------------------------------------- image and label files
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
        if not (0 <= v[0] < MAX_CLASSES and v[0] % 1 == 0):  # (nan and inf fail too; 1e40 would be inf in float32)
            raise ValueError(f'{path}:{n}: class {v[0]:g} is not a class index: an integer from 0 to '
                             f'{MAX_CLASSES - 1} (a bound no real dataset reaches)')
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


# formats whose header Pillow checks without decoding and OpenCV decodes to the same size (EXIF rotation applied)
HEADER_FORMATS = {'BMP', 'JPEG', 'MPO', 'PNG', 'TIFF', 'WEBP'}


def image_size(path):
    """(w, h) of an image as cv2.imread decodes it. From the header where Pillow reads it as OpenCV does (fast), else
    (a .pfm, a .jpg that is another format) by decoding it with OpenCV, as training will. Raises if it is corrupt."""
    try:
        with Image.open(path) as im:
            # EXIF before verify(), after which PNG and TIFF cannot read it; a PNG's from its header only (getexif()
            # would decode the whole PNG to look further)
            exif = im.getexif() if im.format != 'PNG' or 'exif' in im.info else {}
            turned = exif.get(274) in (5, 6, 7, 8)  # EXIF: turned 90 degrees
            if im.format in HEADER_FORMATS and not (turned and im.format == 'TIFF'):  # (OpenCV fails on those TIFFs)
                im.verify()  # (after it the pixels are unusable, the header still is)
                return im.size[::-1] if turned else im.size
    except UnidentifiedImageError:
        pass
    img = cv2.imread(path) if cv2.haveImageReader(path) else None
    if img is None:
        raise ValueError('not an image that OpenCV decodes')
    return img.shape[1::-1]


def _scan_one(args):
    """(path, (w, h) as decoded (EXIF rotation applied), labels, warnings) of an image; None, None if corrupt."""
    img, lab = args
    try:
        w, h = image_size(img)
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


def rect_batches(sizes, batch_size, img_size, stride, pad):
    """For rectangular batches: the images' order (by aspect ratio), each one's batch, and each batch's letterbox
    shape (h, w): the smallest multiple of stride that holds its images at img_size, plus pad strides."""
    order = np.argsort(sizes[:, 1] / sizes[:, 0])
    ar = sizes[order, 1] / sizes[order, 0]  # h / w
    shapes = [[a.max(), 1] if a.max() < 1 else [1, 1 / a.min()] if a.min() > 1 else [1, 1]
              for a in np.split(ar, range(batch_size, len(ar), batch_size))]  # the ratios of each batch
    shapes = np.ceil(np.array(shapes) * img_size / stride + pad).astype(int) * stride
    return order, np.arange(len(order)) // batch_size, shapes


def check_cache_ram(need, free, n, img_size):
    """--cache ram refused, with the figures, if it needs more bytes than are free: not minutes of work that end out of
    memory."""
    if need > (free or math.inf):
        raise ValueError(f'--cache ram needs {need / 1e9:.1f} GB for {n} images at --img {img_size}, but '
                         f'{free / 1e9:.1f} GB are free: leave out --cache, or lower --img')


def load_labels(img_files, nc, prefix='', single_cls=False):
    """Checks every image and label file, with a cache beside the labels (labels/<split>.cache) that is
    reused while no file changed. Returns kept image paths, their (w, h) sizes and label arrays."""
    label_files = [label_path(f) for f in img_files]
    warn_shared_labels(img_files, label_files, prefix)
    cache_path = Path(label_files[0]).parent.with_suffix('.cache')
    key = files_hash(img_files + label_files)
    try:
        c = np.load(cache_path, allow_pickle=False)
        if int(c['version']) != CACHE_VERSION or str(c['hash']) != key:
            raise ValueError('stale cache')
        files, sizes, msgs, n_corrupt = list(c['files']), c['sizes'], list(c['msgs']), int(c['corrupt'])
        labels, how = np.split(c['labels'], np.cumsum(c['counts']))[:-1], 'Cached'  # (the last part is empty)
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
        if single_cls:  # every object is class 0
            lb[:, 0] = 0
        if len(lb) and lb[:, 0].max() >= nc:
            raise ValueError(f'{label_path(f)}: class {int(lb[:, 0].max())} is out of range: the dataset has '
                             f'{nc} classes (0-{nc - 1}); fix the label or give the right --names')
    if not files:
        raise ValueError(f'{prefix}no usable images in {Path(img_files[0]).parent}')
    return files, sizes, labels


def warn_shared_labels(img_files, label_files, prefix=''):
    """a.jpg and a.png in one folder both read labels/a.txt: said, as one set of boxes rarely fits both."""
    if len(set(label_files)) == len(label_files):
        return
    images = {}
    for img, lab in zip(img_files, label_files):
        images.setdefault(lab, []).append(img)
    for lab, imgs in images.items():
        if len(imgs) > 1:
            print(f'{prefix}WARNING: {", ".join(imgs)} share one label file, {lab}', file=sys.stderr)


def read_names(path=None):
    names = list(COCO_NAMES) if path is None else [x.strip() for x in Path(path).read_text().splitlines() if x.strip()]
    if not names:
        raise ValueError(f'{path}: no class names (one per line)')
    return names


# -------------------------------------------------------------------------------------- data YAMLs and known datasets
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


# The patterns below never backtrack more than once per character (a plain text ends on a non-blank, a number has
# one way to split): a hostile line of a megabyte is read in linear time, where `[^:#]*?\s*:` would be quadratic.
QUOTED = r"'(?:[^']|'')*'|" + r'"(?:[^"\\]|\\.)*"'
FLOW_ITEM = re.compile(rf"""\s*({QUOTED}|[^\s,'"](?:[^,]*[^\s,])?)\s*(,|\Z)""")  # one item of [a, 'b c']
NUMBER = re.compile(r'[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?')


def _flow_list(s, where):
    """The items of a flow list's inside `a, 'b c', "d"`; anything else (a quote left open, text after a quoted
    item) is an error: ['a, 'b'] must not be read as two odd names."""
    items, pos = [], 0
    while s[pos:].strip():
        m = FLOW_ITEM.match(s, pos)
        if not m:
            raise ValueError(f'{where}: not a valid list: [{s[:60]}]')
        items.append(_scalar(m[1], where))
        pos = m.end()
        if not m[2]:
            break
    return items


def _scalar(text, where):
    """A quoted or plain scalar, or a flow list [a, 'b c'] of them; plain ones may be null, int or float."""
    s = text.strip()
    if s[:1] == '[' and s[-1:] == ']':
        return _flow_list(s[1:-1], where)
    if len(s) > 1 and s[0] == s[-1] and s[0] in '\'"' and re.fullmatch(QUOTED, s):
        return s[1:-1].replace("''", "'") if s[0] == "'" else json.loads(s)
    if s[:1] and s[0] in '[]{}&*!%@`\'"|>':
        raise ValueError(f'{where}: {s[:40]!r} is not in the YAML read here (no flow mappings, anchors, tags)')
    if NUMBER.fullmatch(s):
        return int(s) if re.fullmatch(r'[-+]?\d+', s) else float(s)
    return None if s in ('', '~', 'null', 'Null', 'NULL') else s


def _key_value(line, where):
    m = re.fullmatch(r"""\s*('[^']*'|"[^"]*"|[^\s'"#:](?:[^:#]*[^\s:#])?)\s*:(?:\s+(.*))?""", line)
    if not m:
        raise ValueError(f'{where}: not a `key: value` line: {line.strip()[:60]!r}')
    return _scalar(m[1], where), (m[2] or '').strip()


def read_yaml(path, key_lines=None):
    """The YAML that dataset files use: `key: value` lines with plain or quoted scalars and flow lists, block
    lists (- a) and one nested mapping level (names: 0: person; or an export service's roboflow: block, read and
    unused), block scalars (| and >) and comments. Anything else is an error naming the file and line. A dict given
    as key_lines gets each top-level key's `file:line`, for the errors of those who check the values."""
    try:
        lines, out = Path(path).read_text(encoding='utf-8-sig').splitlines(), {}  # -sig: a BOM may lead
    except UnicodeDecodeError as e:
        raise ValueError(f'{path}: not UTF-8 text ({e.reason} at byte {e.start})') from None
    key_lines = {} if key_lines is None else key_lines
    tops = [i for i, x in enumerate(lines) if i == 0 or x.strip() and x[0] not in ' \t' and not x.startswith('- ')]
    for i, end in zip(tops, tops[1:] + [len(lines)]):
        line, where = _uncomment(lines[i]), f'{path}:{i + 1}'
        block = [(f'{path}:{j + 1}', lines[j]) for j in range(i + 1, end)]  # the lines under this one: a nested block
        if line.strip() in ('', '---', '...'):
            continue
        if line[0] in ' \t':  # only the first line can be: any other is in the block of the line above
            raise ValueError(f'{where}: unexpected indentation')
        key, value = _key_value(line, where)
        key_lines[key] = where
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


def data_spec(data, task='val'):
    """--data as {'train': sources, 'val': sources, 'names': list or None} (and 'test' with task 'test'), from a data
    YAML (paths resolved by _resolve, its dataset downloaded when missing), a dataset known by name (coco128, coco:
    fetched into ../datasets), or a dataset root, an image folder or a .txt list (validated on its val split, or its
    only one, or its images). A YAML's values are checked here, where they are read: a wrong one is an error naming
    its file and line."""
    p, lines = Path(data), {}
    if p.stem in KNOWN_DATA and p.suffix in ('.yaml', '.yml', '') and not p.exists():
        cfg, base = dict(KNOWN_DATA[p.stem], names=COCO_NAMES), DATASETS_DIR
        zips = [(url, base / dest) for url, dest in cfg.pop('download')]  # (url, folder) pairs: for these only
    elif p.suffix in ('.yaml', '.yml'):
        if not p.is_file():
            raise FileNotFoundError(f'{data}: no such file (known without one: {", ".join(KNOWN_DATA)})')
        cfg, base, zips = read_yaml(p, lines), p.parent, []
    else:
        return dict(train=str(data), val=str(data), test=str(data), names=None)
    value = functools.partial(_yaml_value, cfg, lines, data)
    names = _class_names(value('names', (list, dict), 'a list of names or `index: name` lines'),
                         value('nc', int, f'a number of classes from 1 to {MAX_CLASSES}'), lines, data)
    root = base / (value('path', str, 'a folder') or '')  # relative to the YAML's folder; an absolute path stays so
    download = value('download', str, 'the URL of a .zip (or a script, which is never run)')
    if download and re.fullmatch(r'https?://\S+\.zip', download.strip()):  # a YAML's URL of one zip
        zips = [(download.strip(), root.parent)]  # unpacked into path's parent, as the original
    wanted = dict.fromkeys(('train', 'val', task))  # the test split only when asked for: often it is not there
    splits = {k: value(k, (str, list), 'a path or a list of paths (quote a number)', str) for k in wanted}
    done = [is_downloaded(url, dest) for url, dest in zips]
    if any(done) and not all(done):  # a download that stopped halfway goes on first
        _download_dataset(data, download, zips, root)
    for attempt in range(2):  # the second after the download
        try:
            return dict({k: _resolve(splits, k, root, base) for k in splits}, names=names)
        except FileNotFoundError:
            if attempt or not (download or zips):
                raise
            _download_dataset(data, download, zips, root)


def _yaml_value(cfg, lines, data, key, kinds, what, items=object):
    """cfg[key] (None if absent) if it is of one of these kinds (a list: of items), else a ValueError naming the
    file and line."""
    v = cfg.get(key)
    if v is None or isinstance(v, kinds) and (not isinstance(v, list) or all(isinstance(x, items) for x in v)):
        return v
    raise ValueError(f'{lines.get(key, data)}: {key}: {v!r} is not {what}')


def _class_names(names, nc, lines, data):
    """The class names of names: (a list, or {index: name}) and nc:, as strings (`names: [0, 1, 2]` is common for
    digits); None if neither is given. Bounded by MAX_CLASSES: a YAML must not make us build 10^9 names."""
    where = lines.get('names', data)
    if nc is not None and not 0 < nc <= MAX_CLASSES:
        raise ValueError(f'{lines.get("nc", data)}: nc: {nc} is not a number of classes from 1 to {MAX_CLASSES} '
                         f'(a bound no real dataset reaches)')
    if isinstance(names, dict):  # {index: name}
        bad = [k for k in names if type(k) is not int or not 0 <= k < MAX_CLASSES]
        if bad:
            raise ValueError(f'{where}: names: {bad[0]!r} is not a class index from 0 to {MAX_CLASSES - 1} (the '
                             f'lines are `index: name`, e.g. 0: person)')
        names = [names.get(i, f'class{i}') for i in range(max(names) + 1)] if names else None
    bad = [x for x in names or [] if not isinstance(x, (str, int, float))]
    if bad:
        raise ValueError(f'{where}: names: {bad[0]!r} is not a class name')
    if len(names or []) > MAX_CLASSES:
        raise ValueError(f'{where}: names: more than {MAX_CLASSES} (a bound no real dataset reaches)')
    if names is not None and nc is not None and nc != len(names):
        raise ValueError(f'{data}: nc is {nc} but {len(names)} names are given')
    return [str(x) for x in names] if names else [f'class{i}' for i in range(nc)] if nc else None


def is_coco(data):
    """Whether data_spec's dataset is COCO, told as the original tells it: its val split is coco/val2017.txt."""
    val = data['val'] if isinstance(data['val'], list) else [data['val']]
    return len(val) == 1 and Path(val[0]).as_posix().endswith('coco/val2017.txt')


def coco_records(det, path):
    """An image's detections (n, 6) [x1, y1, x2, y2, conf, cls] in pixels as COCO results, as the original writes them:
    image_id the file's stem (a number if it is one), bbox [x, y, w, h] to 3 decimals, score to 5."""
    stem = Path(path).stem
    box = xyxy2xywh(det[:, :4])
    box[:, :2] -= box[:, 2:] / 2  # the top left corner
    return [dict(image_id=int(stem) if stem.isnumeric() else stem, category_id=int(d[5]),
                 bbox=[round(x, 3) for x in b], score=round(d[4], 5)) for d, b in zip(det.tolist(), box.tolist())]


def save_coco_json(records, path, data, image_files):
    """coco_records of a validation as a JSON file; when the data is COCO, with COCO's category ids and, where
    pycocotools (never a requirement) and the annotations are installed, its mAP printed as the original prints it."""
    coco = is_coco(data)
    for r in records if coco else []:  # COCO's category ids: 1 ... 90, with gaps
        r['category_id'] = COCO91_IDS[r['category_id']]
    save_text(json.dumps(records), path)
    print(f'Saved {len(records)} detections to {path}')
    annotations = Path(data['val'][0]).parent / 'annotations/instances_val2017.json'  # in the dataset root
    if not (coco and importlib.util.find_spec('pycocotools') and annotations.is_file()):
        return
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    truth = COCO(str(annotations))
    evaluation = COCOeval(truth, truth.loadRes(str(path)), 'bbox')
    evaluation.params.imgIds = [int(Path(f).stem) for f in image_files]
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()


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


def _download_dataset(data, download, zips, root):
    """A missing dataset, fetched: the zips of a known dataset or of a YAML `download: URL`. A download: that is a
    Python script is never run (the original exec()s it): the error names what to fetch and where to put it."""
    if not zips:
        urls = ', '.join(re.findall(r'https?://[^\s\'"]+', download)) or 'the dataset'
        raise FileNotFoundError(f'{data}: dataset not found, and its download: is a script, which is never run '
                                f'here. Fetch {urls} by hand and unpack it to {root.resolve()}')
    errors = []
    for url, dest in zips:
        try:
            download_zip(url, dest)
        except (FileNotFoundError, ValueError) as e:
            errors.append(str(e))
    if errors:
        raise FileNotFoundError(f'{data}: dataset not found and not downloaded:\n  ' + '\n  '.join(errors))


# ---------------------------------------------------------------------------------------------- downloads
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
    Raises FileNotFoundError naming the URL used and where to put the file; Ctrl-C exits, keeping the .part."""
    path, name, mirror, src = Path(path), url.rsplit('/', 1)[-1], os.getenv('YOLO_MIRROR', ''), source_of(url)
    part = Path(f'{path}.part')
    print(f'Downloading {src} to {path} ...', file=sys.stderr)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, part) if mirror and not re.match(r'https?://', mirror) else _fetch(src, part)
    except KeyboardInterrupt:
        kept = f'{part} keeps what came, the next run resumes from there' if part.exists() else 'nothing kept'
        print(f'\nInterrupted: the download of {src} stopped; {kept}', file=sys.stderr)
        raise SystemExit(130) from None
    except (OSError, ValueError, http.client.HTTPException) as e:
        hint = '' if mirror else f', or set YOLO_MIRROR to a folder or an http(s) URL that serves {name}'
        raise FileNotFoundError(f'{src}: download failed ({e}). Download it by hand and put it at {path.resolve()}'
                                + hint) from None
    if path.suffix in ('.zip', '.pt') and not zipfile.is_zipfile(part):  # (every PyTorch checkpoint is a zip)
        with open(part, 'rb') as f:
            head = f.read(32)
        part.unlink()
        raise FileNotFoundError(f'{src}: not a valid zip archive, which every {path.suffix} is (it begins {head!r}: '
                                f'an error page?); deleted, the next run fetches it again')
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


def is_downloaded(url, dest):
    """Whether the zip at url is unpacked in dest: its marker says so, and the folders it made and the files at its
    top level are still there (a dataset folder deleted is fetched again)."""
    try:
        made = json.loads(done_marker(url, dest).read_text())
        return made['url'] == url and all(os.path.lexists(Path(dest) / p) for p in made['paths'])
    except (OSError, ValueError, KeyError, TypeError):  # no marker, or not one that we wrote
        return False


def _inside(path, folder):
    """Whether path is in folder (or is it): as written, .. resolved, or once links are followed."""
    return any(Path(f(path)).is_relative_to(f(folder)) for f in (os.path.abspath, os.path.realpath))


def download_zip(url, dest):
    """A zip fetched into dest (or put there by hand), unpacked into a temporary folder beside it, moved into place
    and deleted; is_downloaded() then says it is there. dest must be inside DATASETS_DIR, and no file there is ever
    replaced. A bad zip (a corrupt member, encrypted, a name both a file and a folder) is deleted, to be fetched again;
    one that dest cannot take (a full disk, a file where the zip has a folder) is kept. Either way nothing of it is
    left in dest: a crash or an error never leaves a half dataset that looks whole."""
    dest = Path(dest)
    if not _inside(dest, DATASETS_DIR):
        raise ValueError(f'{url}: not unpacked into {dest}: downloads only ever write inside the datasets folder '
                         f'{DATASETS_DIR}. Set the YAML\'s path: to a folder in it, or unpack the zip by hand')
    if is_downloaded(url, dest):
        return
    name = url.rsplit('/', 1)[-1]
    zip_path, tmp, marker = dest / name, dest / f'.{name}.tmp', done_marker(url, dest)
    origin = f'{zip_path} (put there by hand)' if zip_path.exists() else f'{zip_path} (from {source_of(url)})'
    if not zip_path.exists():
        download(url, zip_path)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _unzip(zip_path, tmp, origin)
        folders = [os.path.relpath(d, tmp) for d, _, _ in os.walk(tmp)][1:]
        made = folders + [e.name for e in os.scandir(tmp) if e.is_file()]  # what is_downloaded() looks for
        _move_into(tmp, dest, origin)
    except KeyboardInterrupt:
        print(f'\nInterrupted while unzipping {zip_path}: the zip is kept, the next run unzips it', file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    Path(f'{marker}.tmp').write_text(json.dumps(dict(url=url, paths=made)))
    os.replace(f'{marker}.tmp', marker)
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


def _move_into(tmp, dest, origin):
    """The tree tmp moved into dest: whatever dest lacks (a whole folder in one move); a file it already has is kept,
    never replaced. A file where the tree has a folder, or the reverse, is an error before anything moves."""
    moves, kept, todo = [], [], [(tmp, dest)]
    while todo:
        src, dst = todo.pop()
        for entry in os.scandir(src):
            target = dst / entry.name
            if not os.path.lexists(target):
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


# ---------------------------------------------------------------------------------------------- checkpoints on disk
OFFICIAL = {f'yolov5{s}{p6}.pt' for s in 'nsmlx' for p6 in ('', '6')}  # the release's files, fetched by name
RELEASE_URL = 'https://github.com/ultralytics/yolov5/releases/download/v7.0/'


class _Stub:
    """Stands in for every class of the original code and every torch module it pickles: an attribute dict only."""
    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else state[0] or {})


_NP = (getattr(np, '_core', None) or np.core).multiarray
# harmless globals beside the classes: the numpy arrays and numbers that the original's training runs leave behind
_NUMPY = {f'numpy.{m}multiarray.{k}': getattr(_NP, k) for m in ('core.', '_core.') for k in ('_reconstruct', 'scalar')}
_NUMPY.update({'numpy.ndarray': np.ndarray, 'numpy.dtype': np.dtype},
              **{f'numpy.dtypes.{k}': v for k, v in vars(np.dtypes).items() if isinstance(v, type)})


def _unpickle_official(path):
    """The checkpoint through torch's weights-only unpickler, the original's classes read as attribute holders:
    every other global it names is refused before anything is read, so a malicious pickle cannot run code."""
    allowed = dict(_NUMPY)  # all numpy's dtype classes: the unpickler also checks the types of the dtypes it builds
    for g in torch.serialization.get_unsafe_globals_in_checkpoint(path):  # read from the pickle, nothing run
        if g.startswith(('models.', 'torch.nn.modules.')):
            allowed[g] = _Stub
        elif g not in _NUMPY:
            raise ValueError(f'refused to load global {g}')
    with torch.serialization.safe_globals([(obj, name) for name, obj in allowed.items()]):
        return torch.load(path, map_location='cpu', weights_only=True)


def _state_dict_of(stub, prefix=''):
    """The state dict of a stub module tree, with the same keys that nn.Module.state_dict() gives."""
    tensors = {**vars(stub).get('_parameters', {}), **vars(stub).get('_buffers', {})}
    sd = {prefix + k: v for k, v in tensors.items() if v is not None}
    for k, child in vars(stub).get('_modules', {}).items():
        if child is not None:
            sd.update(_state_dict_of(child, f'{prefix}{k}.'))
    return sd


def read_official(path):
    """(meta, state dict) of an official checkpoint: what model.YOLOv5(**meta) needs, and the weights by name."""
    ckpt = _unpickle_official(path)
    stub = ckpt.get('ema') or ckpt.get('model') if isinstance(ckpt, dict) else None
    if not isinstance(stub, _Stub) or not isinstance(getattr(stub, 'yaml', None), dict):
        raise ValueError('no YOLOv5 model inside')
    cfg = stub.yaml
    layers = len(cfg.get('backbone', [])), len(cfg.get('head', []))
    if layers not in ((10, 15), (12, 22)):  # P5 (yolov5n ... x), P6 (yolov5n6 ... x6)
        raise ValueError('not a YOLOv5 v6+ model (the yolov5n/s/m/l/x or yolov5n6/s6/m6/l6/x6 architecture)')
    detect = stub._modules['model']._modules[str(sum(layers) - 1)]
    names = stub.names if isinstance(stub.names, list) else [stub.names[i] for i in sorted(stub.names)]
    meta = dict(scale=(cfg['depth_multiple'], cfg['width_multiple']), nc=int(detect.nc), names=names,
                p6=layers[0] == 12)
    return meta, _state_dict_of(stub)  # the anchors are among the weights


def check_checkpoint(path, meta, sd, scales):
    """(meta, fp32 state dict) of a checkpoint, checked before a model is built from them: a scale among scales' names
    or (depth, width) multiples in (0, 4], 1 to MAX_CLASSES classes with a name each, weights that are tensors. A
    hand-made or damaged checkpoint gets a ValueError naming the file, not a traceback from deep inside the model."""
    scale, nc, names = meta['scale'], meta['nc'], meta['names']
    pair = isinstance(scale, (list, tuple)) and len(scale) == 2
    if not (scale in scales if isinstance(scale, str) else pair and all(type(x) in (int, float) and 0 < x <= 4
                                                                        for x in scale)):
        raise ValueError(f'{path}: scale {scale!r} is not one of {", ".join(scales)} or (depth, width) multiples '
                         f'in (0, 4]')
    if type(nc) is not int or not 0 < nc <= MAX_CLASSES:
        raise ValueError(f'{path}: nc {nc!r} is not a number of classes from 1 to {MAX_CLASSES}')
    if not isinstance(names, (list, tuple)) or len(names) != nc:
        raise ValueError(f'{path}: {len(names) if isinstance(names, (list, tuple)) else "no"} class names for its '
                         f'{nc} classes')
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f'{path}: its weights are not a dict of tensors')
    meta = dict(meta, names=[str(x) for x in names])  # p6 and anchors, where given, stay
    return meta, {k: v.float() for k, v in sd.items()}


def read_checkpoint(path):
    """(meta, fp32 state dict) of an official yolov5*.pt (downloaded if missing) or of one of ours (a plain dict that
    torch.load(weights_only=True) reads), without building a model: model.YOLOv5(**meta) is the model it describes.
    Raises ValueError or FileNotFoundError."""
    path = str(path)
    if not os.path.exists(path):
        if os.path.basename(path) not in OFFICIAL:
            raise FileNotFoundError(f'{path}: no such weights file')
        download(RELEASE_URL + os.path.basename(path), path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f'{path}: not a PyTorch checkpoint (not a zip archive)')
    try:  # ours first: a plain dict of tensors and metadata (anything else fails a lookup)
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        meta = {k: ckpt[k] for k in ('scale', 'nc', 'names')} | {'p6': ckpt.get('p6', False)}  # older: P5
        sd = ckpt.get('ema') or ckpt['model']
    except Exception:
        try:
            meta, sd = read_official(path)
        except Exception as e:
            raise ValueError(f'{path}: not a YOLOv5 checkpoint ({e})') from None
    return check_checkpoint(path, meta, sd, 'nsmlx')


def save_atomic(obj, path):
    """torch.save to a temporary file, then rename: a crash or a full disk never leaves a truncated checkpoint."""
    tmp = Path(f'{path}.tmp')
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        tmp.unlink(missing_ok=True)
        kept = 'it still holds the last epoch saved' if path.exists() else 'nothing was saved'
        raise SystemExit(f'ERROR: cannot write {path} ({e}); {kept}') from None


def to_cpu(obj):
    """A copy of a checkpoint's dict with every tensor copied to the CPU: kept for later, off the GPU's memory."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to('cpu', copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    return type(obj)(map(to_cpu, obj)) if isinstance(obj, (list, tuple)) else obj


def strip_checkpoint(path):
    """As the original at the end of a run: only the EMA's weights, in fp16, and no optimizer: the file people ship."""
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    ckpt['model'] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt.pop('ema').items()}
    save_atomic({k: v for k, v in ckpt.items() if k not in ('optimizer', 'scaler', 'updates')}, path)


# ---------------------------------------------------------------------------------------------- run folders
def run_dir(project, name, exist_ok=False):
    """The folder of a new run, claimed (created) and returned: project/name, or if that exists (and not exist_ok)
    name2, name3, ... A mkdir that fails if the folder exists is the claim: two runs started at the same instant
    never share one. A folder that cannot be made ends the program with a message."""
    for n in itertools.count(1):
        path = Path(project) / (f'{name}{n}' if n > 1 else name)
        try:
            path.mkdir(parents=True, exist_ok=exist_ok)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise SystemExit(f'ERROR: cannot write the run folder {path} ({e.strerror})') from None


@contextlib.contextmanager
def removed_if_unstarted(save_dir, fresh):
    """Around the setup of a run: if it fails (or Ctrl-C), a fresh run folder goes again with what pick_run put in it,
    unless something else is in it by then. Ctrl-C ends with a message, not a traceback."""
    try:
        yield
    except BaseException as e:
        if fresh:
            with contextlib.suppress(OSError):  # rmdir fails on a folder that is not empty: it stays
                (save_dir / '.torchrun_id').unlink(missing_ok=True)
                (save_dir / 'weights').rmdir()
                save_dir.rmdir()
        if isinstance(e, KeyboardInterrupt):
            print('\nInterrupted before training started', file=sys.stderr)
            raise SystemExit(130) from None
        raise


def read_run_checkpoint(path):
    """The checkpoint that --resume continues: a last.pt that a training run here wrote. Anything else (official
    weights, a damaged file, a pickle that would run code: nothing in it is run) ends the program with a message."""
    needs, ckpt, damage = [], None, None
    try:
        needs = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # read from the pickle, nothing run
        ckpt = None if needs else torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged file
        damage = str(e).split('. ')[0][:150]
    if isinstance(ckpt, dict) and isinstance(ckpt.get('opt'), dict) and type(ckpt.get('epoch')) is int:
        return ckpt
    if needs:
        why = f'it holds {needs[0]}, which needs code to load (official weights, or another program\'s file)'
    else:
        why = f'it is damaged ({damage})' if damage else 'it holds no training state'
    raise SystemExit(f'ERROR: --resume {path}: not the last.pt of a training run: {why}. To fine-tune from its '
                     f'weights, give it to --weights')


def stop_run(e, last, saved):
    """How a training run ends on Ctrl-C (exit 130) or an error that stops it (FloatingPointError): saying what last.pt
    holds (epoch saved, or None). Running out of GPU memory goes on to train.main's message."""
    held = f'{last} holds epoch {saved}' if saved is not None else 'no epoch completed'
    if isinstance(e, KeyboardInterrupt):
        print(f'\nInterrupted: {held}' + ('; continue with --resume' if saved is not None else ', nothing to resume'))
        raise SystemExit(130)
    if isinstance(e, torch.OutOfMemoryError):
        raise e
    raise SystemExit(f'ERROR: {e}: training stopped, {held}. Look for bad labels, or lower lr0 / use --no-amp')


def run_under_torchrun(script, argv, n):
    """This process becomes torchrun running the same command in n processes, on a free port (--standalone)."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(n), script]
    print(f'{n} GPUs, one process each (DDP): {" ".join(cmd + argv)}', flush=True)
    os.execv(sys.executable, cmd + argv)


def pick_run(opt, parse_args):
    """(options, checkpoint to resume or None, run folder). --resume continues a run; so does a restart by torchrun
    (TORCHELASTIC_RESTART_COUNT > 0): the run this torchrun job began, marked with its run id, from its last.pt,
    or from the beginning if it saved none yet. Else a new run folder, refused now if it cannot be written.
    parse_args(argv) gives the options of today's command line: a checkpoint's own options override them."""
    run_id, restarted = os.getenv('TORCHELASTIC_RUN_ID'), int(os.getenv('TORCHELASTIC_RESTART_COUNT', 0))
    markers = sorted(Path(opt.project).glob('*/.torchrun_id'), key=os.path.getmtime)  # a reused id: the newest run
    mine = [m.parent for m in markers if restarted and m.read_text() == run_id][-1:]
    if mine and (mine[0] / 'weights/last.pt').exists():
        opt.resume = str(mine[0] / 'weights/last.pt')
    if opt.resume:  # everything, options included, comes from the checkpoint: --resume PATH, or the latest last.pt
        runs = [opt.resume] if isinstance(opt.resume, str) else sorted(Path(opt.project).glob('**/last.pt'),
                                                                           key=os.path.getmtime)
        if not runs:
            raise SystemExit(f'--resume: no last.pt under {opt.project}; give its path: --resume path/to/last.pt')
        last = Path(runs[-1])
        ckpt = read_run_checkpoint(last)
        keep = dict(device=opt.device, workers=opt.workers, resume=str(last))  # from this command line
        opt = argparse.Namespace(**{**vars(parse_args(['--batch', str(ckpt['opt'].get('batch', 16))])), **ckpt['opt'],
                                    **keep})
        if 'optimizer' not in ckpt or ckpt['epoch'] + 1 >= opt.epochs:  # a finished run is stripped of its optimizer
            done = f'finished all {opt.epochs} epochs' if ckpt['epoch'] + 1 >= opt.epochs else 'stopped early'
            raise SystemExit(f'{last} {done}: nothing to resume (fine-tune it with --weights)')
        print(f'Resuming {last} from epoch {ckpt["epoch"] + 1}')
        return opt, ckpt, last.parent.parent
    save_dir = mine[0] if mine else run_dir(opt.project, opt.name, opt.exist_ok)
    try:
        (save_dir / 'weights').mkdir(parents=True, exist_ok=True)
        (save_dir / '.torchrun_id').write_text(run_id or '')
    except OSError as e:
        raise SystemExit(f'ERROR: cannot write the run folder {save_dir} ({e.strerror})') from None
    return opt, None, save_dir


@functools.lru_cache(maxsize=None)
def torchvision_nms():
    # `import torchvision` costs ~1.5 s (it imports every model and dataset); its compiled ops alone are free
    try:
        lib = glob.glob(os.path.join(importlib.util.find_spec('torchvision').submodule_search_locations[0], '_C*.*'))
        torch.ops.load_library(sorted(lib)[0])
        return torch.ops.torchvision.nms
    except Exception:
        import torchvision
        return torchvision.ops.nms


# ---------------------------------------------------------------------------------------------- autoanchor
# Whether the anchors fit a dataset's boxes under the loss's shape test (w and h within anchor_t of an anchor's), and
# new anchors if they do not: a setup step, for datasets whose boxes are unlike COCO's.
def label_wh(dataset, img_size, jitter=None):
    """Label widths and heights in pixels, for images resized so that the long side is img_size."""
    shapes = img_size * dataset.sizes / dataset.sizes.max(1, keepdims=True) * (1 if jitter is None else jitter)
    return np.concatenate([lb[:, 3:5] * s for s, lb in zip(shapes, dataset.labels)]).astype(np.float32)


def anchor_metric(anchors, wh, thr):
    """Per label and anchor, the ratio match; per label the best one; the best possible recall (labels some anchor
    matches within thr) and the mean number of anchors within thr."""
    r = wh[:, None] / anchors[None]
    x = torch.min(r, 1 / r).min(2)[0]
    best = x.max(1)[0]
    return x, best, (best > 1 / thr).float().mean(), (x > 1 / thr).float().sum(1).mean()


def check_anchors(dataset, model, thr, img_size, seed=0):
    """Best possible recall of the current anchors; below 0.98, evolve new ones and keep them if better."""
    det = model.detect
    rng = np.random.default_rng(seed)
    wh = torch.tensor(label_wh(dataset, img_size, rng.uniform(0.9, 1.1, (len(dataset.sizes), 1))))
    _, _, bpr, aat = anchor_metric(det.pixel_anchors().view(-1, 2).cpu(), wh, thr)
    msg = f'AutoAnchor: {aat:.2f} anchors/target, {bpr:.3f} Best Possible Recall (BPR). '
    if bpr > 0.98:
        print(msg + 'Current anchors are a good fit to dataset')
        return
    print(msg + 'Anchors are a poor fit to dataset, attempting to improve...')

    def fitness(k, wh):  # the mean shape match of the labels that some anchor matches within thr
        best = anchor_metric(torch.tensor(k, dtype=torch.float32), wh, thr)[1]
        return torch.where(best > 1 / thr, best, 0.0).mean()
    new = kmean_anchors(label_wh(dataset, img_size), det.anchors.numel() // 2, fitness, seed=seed)
    _, _, new_bpr, new_aat = anchor_metric(torch.tensor(new, dtype=torch.float32), wh, thr)
    print(f'AutoAnchor: thr={1 / thr:.2f}: {new_bpr:.4f} best possible recall, {new_aat:.2f} anchors past thr; '
          f'anchors: ' + ', '.join(f'{round(a)},{round(b)}' for a, b in new))
    if new_bpr > bpr:
        det.set_anchors(torch.tensor(new))
        print('AutoAnchor: Done, new anchors saved to the model')
    else:
        print('AutoAnchor: Done, original anchors are better and are kept')


def kmean_anchors(wh0, n, fitness, gen=1000, seed=0):
    """n anchors (w, h) for the label sizes wh0 (pixels): k-means on them (whitened), then a genetic search that
    maximises fitness(anchors, label sizes); sorted by area."""
    rng = np.random.default_rng(seed)
    small = (wh0 < 3.0).any(1).sum()
    if small:
        print(f'AutoAnchor: WARNING: {small} of {len(wh0)} labels are smaller than 3 pixels')
    wh = wh0[(wh0 >= 2.0).any(1)]
    s = np.maximum(wh.std(0), 1e-6)  # whiten, so that width and height count alike
    x = wh / s
    wh = torch.tensor(wh)
    k = x[rng.choice(len(x), n, replace=len(x) < n)]
    for _ in range(30):  # Lloyd's iterations
        nearest = ((x[:, None] - k[None]) ** 2).sum(2).argmin(1)
        k = np.array([x[nearest == j].mean(0) if (nearest == j).any() else k[j] for j in range(n)])

    k = k * s
    f = fitness(k, wh)
    for _ in range(gen):
        v = np.ones(k.shape)
        while (v == 1).all():  # mutate until something changes
            mutated = rng.random(k.shape) < 0.9  # which values change, and by how much:
            sigma = rng.random()
            noise = rng.standard_normal(k.shape)
            v = np.where(mutated, sigma * noise * 0.1 + 1, 1.0).clip(0.3, 3.0)
        kg = (k * v).clip(min=2.0)
        fg = fitness(kg, wh)
        if fg > f:
            f = fg
            k = kg
    return k[np.argsort(k.prod(1))]


# ---------------------------------------------------------------------------------------------- pictures
def save_results(opt, names, save_dir, stem, frame_number, frame, det):
    """detect.py's outputs of a frame: its crops (--save-crop) and label file (--save-txt, numbered for a video frame),
    then its boxes drawn on it (unless --nosave). Returns the number of label files written; raises OSError if
    something cannot be written."""
    for *xyxy, conf, cls in reversed(det.tolist()) if opt.save_crop else []:  # from the frame before any drawing
        save_crop(frame, xyxy, save_dir / 'crops' / names[int(cls)] / f'{stem}.jpg')
    for *xyxy, conf, cls in reversed(det.tolist()) if not opt.nosave else []:
        label = None if opt.hide_labels else names[int(cls)] + ('' if opt.hide_conf else f' {conf:.2f}')
        draw_box(frame, xyxy, label, PALETTE[int(cls) % len(PALETTE)], opt.line_thickness)
    if not (opt.save_txt and len(det)):
        return 0
    gain = torch.tensor(frame.shape, device=det.device)[[1, 0, 1, 0]]  # YOLO rows `cls xc yc w h [conf]`, normalized
    rows = torch.cat((det[:, 5:], xyxy2xywh(det[:, :4]) / gain, det[:, 4:5]), 1).tolist()[::-1]
    name = f'{stem}_{frame_number}' if frame_number else stem
    columns = 6 if opt.save_conf else 5
    save_text(''.join(' '.join(f'{v:g}' for v in r[:columns]) + '\n' for r in rows),
              save_dir / 'labels' / f'{name}.txt')
    return 1


def print_progress(stats, i, n, t0):
    """The training line of batch i of n: (epoch, device, box, obj, cls losses, instances, size), speed and ETA; live
    on a terminal, else printed once, at the end of the epoch."""
    last = i == n - 1
    if not (sys.stdout.isatty() or last):
        return
    epoch, device, *numbers = stats
    mem = f'{torch.cuda.memory_reserved(device) / 1e9:.3g}G' if device.type == 'cuda' else '0G'
    speed = (i + 1) / (time.time() - t0)
    eta = f'  {i + 1}/{n} {speed:.2f}it/s ETA {(n - i - 1) / speed:.0f}s'
    line = ('%11s' * 2 + '%11.4g' * 5) % (epoch, mem, *numbers) + eta
    start = '\r' if sys.stdout.isatty() else ''
    print(start + line, end='\n' if last else '', flush=True)


def draw_box(img, xyxy, label, color, thickness):
    p1, p2 = (int(xyxy[0]), int(xyxy[1])), (int(xyxy[2]), int(xyxy[3]))
    cv2.rectangle(img, p1, p2, color, thickness, cv2.LINE_AA)
    label = '' if label is None else str(label)  # a class name may be a number (names: [0, 1, 2])
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


FONT, AA, BLACK, BLUE, ORANGE = cv2.FONT_HERSHEY_SIMPLEX, cv2.LINE_AA, (0, 0, 0), (180, 100, 20), (20, 130, 255)
HUES = cv2.cvtColor(np.uint8([[(i * 47 % 180, 230, 210) for i in range(180)]]), cv2.COLOR_HSV2BGR)[0].tolist()


def put(img, s, x, y, ax=0.0, ay=0.0, scale=0.5, color=BLACK, vertical=False):
    """Text whose box has its (ax, ay) fraction at (x, y); vertical reads bottom-up (OpenCV can't: a mask turns)."""
    s = str(s)  # a class name may be a number
    (w, h), b = cv2.getTextSize(s, FONT, scale, 1)
    m = np.rot90(cv2.putText(np.zeros((h + b, w), np.uint8), s, (0, h), FONT, scale, 255, 1, AA), vertical)[..., None]
    y0, x0 = (min(max(int(p - f * n), 0), N - n) for p, f, n, N in zip((y, x), (ay, ax), m.shape, img.shape))  # inside
    roi = img[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
    roi[:] = roi * (1 - m / 255) + np.array(color) * (m / 255)  # blending keeps the antialiasing on any background


def chart(img, box, xlim, ylim, title='', xlabel='', ylabel='', xticks=None, yticks=None, z=None):
    """Frame box=(x0, y0, x1, y1): title, axis labels, ticks [(value, name)] or round numbers, heatmap z (0..1)."""
    def to(x, y):  # data to pixels; chart returns it
        return np.int_(np.stack([x0 + (x - a) / (b - a) * (x1 - x0), y1 - (y - c) / (d - c) * (y1 - y0)], -1) + 0.5)
    (x0, y0, x1, y1), (a, b), (c, d) = box, xlim, ylim
    sx, sy = (float(f'{10 ** (round(3 * math.log10(abs(hi - lo) / 5)) / 3):.0e}') for lo, hi in (xlim, ylim))  # 1-2-5
    if z is not None:  # white to dark blue; interpolation 0 (nearest) keeps the cells sharp
        img[y0:y1, x0:x1] = cv2.resize(255 - z[..., None] * [75, 185, 245], (x1 - x0, y1 - y0), interpolation=0)
    for t, s in xticks or [(t, f'{t:.4g}') for t in np.arange(math.ceil(a / sx - 1e-9), b / sx + 1e-9) * sx + 0.0]:
        put(img, str(s)[:14], to(t, c)[0], y1 + 6, 0.5, 0, vertical=bool(xticks))  # names run down the x axis
    for t, s in yticks or [(t, f'{t:.4g}') for t in np.arange(math.ceil(c / sy - 1e-9), d / sy + 1e-9) * sy + 0.0]:
        put(img, str(s)[:14], x0 - 6, to(a, t)[1], 1, 0.5)
    cv2.rectangle(img, (x0, y0), (x1, y1), BLACK)
    put(img, title, (x0 + x1) / 2, y0 - 8, 0.5, 1, 0.65)
    put(img, xlabel, (x0 + x1) / 2, y1 + (170 if xticks else 28), 0.5, 0, 0.6)  # under the numbers or the names
    put(img, ylabel, x0 - 6, y0 - 8, 1, 1, 0.6)  # over the y axis' numbers or names, left of the title
    return to


# results.png's panels, in the original's layout: top train losses, P and R; bottom val losses and mAPs. Other columns
# of results.csv follow them, five a row; the learning rates are not drawn.
RESULT_PANELS = ['train/box_loss', 'train/obj_loss', 'train/cls_loss', 'metrics/precision', 'metrics/recall',
                 'val/box_loss', 'val/obj_loss', 'val/cls_loss', 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95']


def read_results(path):
    """results.csv as (column names, rows of numbers); a row cut short or garbled by a crash is left out, and so is
    the whole file if its header is (it has no epoch column): the next row written starts it again."""
    lines = Path(path).read_text(errors='replace').splitlines() if Path(path).is_file() else []
    head = [h.strip() for h in lines[0].split(',')] if lines else []
    if 'epoch' not in head:
        return [], []
    rows = []
    for line in lines[1:]:
        try:
            row = [float(v) for v in line.split(',')]
        except ValueError:
            continue
        if len(row) == len(head):
            rows.append(row)
    return head, rows


def _rewrite_results(path, head, rows):
    text = ','.join(f'{k:>20}' for k in head) + '\n' + ''.join(','.join(f'{v:>20.5g}' for v in r) + '\n' for r in rows)
    tmp = Path(f'{path}.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)  # a crash leaves the old file or the new one, never half of one


def write_results(path, row):
    """Appends row {column: value} to results.csv, columns matched by name. If the columns changed (a metric added
    or removed), the file is written anew with the new header first, each old value under its name (nan if none)."""
    head, rows = read_results(path)
    if head != list(row):
        _rewrite_results(path, list(row), [[dict(zip(head, r)).get(k, math.nan) for k in row] for r in rows])
    with open(path, 'a') as f:
        f.write(','.join(f'{v:>20.5g}' for v in row.values()) + '\n')


def trim_results(path, start_epoch):
    """Drops the rows of epochs that will run again: a crash came between a row and its checkpoint."""
    head, rows = read_results(path)
    if head:
        _rewrite_results(path, head, [r for r in rows if r[head.index('epoch')] < start_epoch])


def plot_results(csv_path):
    """results.png beside csv_path: each loss and metric against epoch, as blue dots and smoothed (orange line)."""
    head, rows = read_results(csv_path)
    data = dict(zip(head, np.array(rows, dtype=np.float64).reshape(-1, len(head)).T))
    panels = [k for k in RESULT_PANELS if k in data]
    panels += [k for k in head if k not in panels and k != 'epoch' and not k.startswith('x/lr')]
    x = data['epoch']
    img = np.full((500 * math.ceil(len(panels) / 5), 2000, 3), 255, np.uint8)
    for k, name in enumerate(panels):
        y = data[name]
        margin = np.nanmax(y) - np.nanmin(y) if np.isfinite(y).any() else 0
        margin = margin / 20 or 0.01
        x0 = k % 5 * 400 + 85
        y0 = k // 5 * 500 + 45
        ylim = (np.nanmin(y) - margin, np.nanmax(y) + margin) if np.isfinite(y).any() else (0, 1)
        to = chart(img, (x0, y0, x0 + 300, y0 + 395), (x[0] - 0.3, x[-1] + 0.3), ylim, name)
        ok = np.isfinite(y)  # a column added during a run has no values before
        cv2.polylines(img, list(to(x[ok], y[ok])[:, None]), True, BLUE, 6 if len(x) < 100 else 4, AA)  # dots
        if ok.any():  # smoothed as the original's scipy.ndimage.gaussian_filter1d(y, sigma=3)
            trend = cv2.GaussianBlur(y[ok][:, None], (1, 0), 3, borderType=cv2.BORDER_REFLECT)[:, 0]
            cv2.polylines(img, [to(x[ok], trend)], False, ORANGE, 2, AA)
    cv2.imwrite(str(Path(csv_path).with_name('results.png')), img)


def confusion_add(matrix, det, labels, conf=0.25, iou_thres=0.45):
    """One image into train.validate's confusion matrix (rows predicted, columns true, background last): detections
    above conf and labels (class, xyxy) paired one to one at IoU > iou_thres, best first. A detection counts as
    background only in an image where something was paired: the original's counts, kept comparable."""
    bg = len(matrix) - 1
    det = det[det[:, 4] > conf]
    iou = box_iou(labels[:, 1:], det[:, :4])
    li, di = torch.where(iou > iou_thres)
    m = torch.stack((li, di, iou[li, di]), 1).cpu().numpy()
    for k in (1, 0):  # one label per detection, then one detection per label, best IoU first
        m = m[m[:, 2].argsort()[::-1]]
        m = m[np.unique(m[:, k], return_index=True)[1]]
    li = m[:, 0].astype(int)
    di = m[:, 1].astype(int)
    classes = det[:, 5].int().tolist()
    for i, c in enumerate(labels[:, 0].int().tolist()):
        matrix[classes[di[li == i][0]] if (li == i).sum() == 1 else bg, c] += 1
    for k, c in enumerate(classes if len(m) else []):
        matrix[c, bg] += k not in di


def save_confusion_matrix(matrix, names, folder):
    plot_confusion_matrix(matrix, names, folder / 'confusion_matrix.png')
    np.savetxt(folder / 'confusion_matrix.csv', matrix, '%d', ',', header='rows: predicted, columns: true class, in '
               'the order: ' + ', '.join(names) + ', background (conf 0.25, IoU 0.45)')


def plot_confusion_matrix(matrix, names, path):
    """Column-normalized heatmap: where each true class (column) ended up; the last row and column are background."""
    n, m = len(matrix), matrix / np.maximum(matrix.sum(0), 1e-9)
    m, S = m * (m >= 0.005), min(120, 1600 // n) * n  # cells under 0.005 stay blank; values fit while n < 30
    tick = [(i + 0.5, s) for i, s in enumerate([*names, 'background'])][::math.ceil(16 * n / S)]  # 16 pixels apart
    img = np.full((S + 300, S + 290, 3), 255, np.uint8)
    to = chart(img, (240, 50, 240 + S, 50 + S), (0, n), (n, 0), 'Confusion matrix', 'True', 'Predicted', tick, tick, m)
    for i, j in np.argwhere(m > 0) if n < 30 else []:  # white on the dark cells
        put(img, f'{m[i, j]:.2f}', *to(j + 0.5, i + 0.5), 0.5, 0.5, S / n / 110, (255 * (m[i, j] > 0.5),) * 3)
    cv2.imwrite(str(path), img)


def plot_curve(px, curves, mean, names, path, xlabel, ylabel, mean_label):
    """One thin line per class (named up to 20 classes, else grey) and their mean as a thick blue line."""
    img, named = np.full((900, 1200, 3), 255, np.uint8), len(curves) < 21
    to = chart(img, (110, 50, 850, 810), (0, 1), (0, 1), f'{ylabel}-{xlabel} curve', xlabel, ylabel)
    for i, y in enumerate(curves):
        cv2.polylines(img, [to(px, y)], False, HUES[i % 180] if named else (170, 170, 170), 1, AA)
    cv2.polylines(img, [to(px, mean)], False, BLUE, 4, AA)
    for k, s in enumerate([mean_label] + (names[:len(curves)] if named else [])):  # the legend: its lines' colours
        put(img, s, 870, 60 + 26 * k, 0, 0.5, 0.55, HUES[(k - 1) % 180] if k else BLUE)
    cv2.imwrite(str(path), img)


def plot_labels(labels, names, path):
    """labels.jpg: instances per class, and 2-D histograms of box centres and of box sizes (darker = more)."""
    n, img = np.bincount(labels[:, 0].astype(int), minlength=len(names)), np.full((1330, 1600, 3), 255, np.uint8)
    ticks = [*enumerate(names)][::math.ceil(16 * len(n) / 1460)]  # names at least 16 pixels apart
    to = chart(img, (100, 50, 1560, 600), (-0.5, len(n) - 0.5), (0, n.max() * 1.05 + 1), 'instances', xticks=ticks)
    for i, count in enumerate(n):
        cv2.rectangle(img, tuple(to(i - 0.4, 0)), tuple(to(i + 0.4, count)), HUES[i % 180], -1)
    for x0, (i, j, a, b) in ((150, (1, 2, 'x', 'y')), (900, (3, 4, 'width', 'height'))):
        h = np.log1p(np.histogram2d(labels[:, i], labels[:, j], 50, [[0, 1], [0, 1]])[0]).T[::-1]  # rows: y, 1 on top
        chart(img, (x0, 820, x0 + 450, 1270), (0, 1), (0, 1), f'{b} vs {a}', a, b, z=h / max(h.max(), 1e-9))
    cv2.imwrite(str(path), img)


# ---------------------------------------------------------------------------------------------- detect's inputs
STREAMS = ('rtsp://', 'rtmp://', 'http://', 'https://')


def is_stream(source):
    """A webcam index (0, 1, ...) or a URL: OpenCV reads it frame by frame as it comes."""
    return source.isnumeric() or source.lower().startswith(STREAMS)


def expand_sources(sources):
    """Yields (source, error or None) for each image or video named by files, folders or globs, each webcam index and
    URL, and each line of a .streams file. An existing path is itself, even one with glob characters (photo[1].jpg)."""
    media = IMAGE_EXTS | VIDEO_EXTS
    for s in sources:
        if is_stream(s):
            yield s, None
            continue
        if s.endswith('.streams') and os.path.isfile(s):  # one source a line
            yield from expand_sources(Path(s).read_text().split())
            continue
        if os.path.isdir(s):
            files = sorted(os.path.join(s, f) for f in os.listdir(s) if Path(f).suffix.lower() in media)
        elif os.path.exists(s) or not any(c in s for c in '*?['):
            files = [s]
        else:
            files = sorted(glob.glob(s, recursive=True))
        if not files:
            yield s, 'no such file or directory'
        for f in files:
            if not os.path.isfile(f):
                yield f, 'no such file'
            elif Path(f).suffix.lower() not in media:
                yield f, f'not an image or video (supported: {" ".join(sorted(media))})'
            else:
                yield f, None


def read_frames(source, vid_stride=1):
    """Yields (frame BGR, index, frame count or 0 if unknown, fps): one frame for an image, none for a file that does
    not decode or a stream that does not open. Of a video or stream every vid_stride-th frame, as the original reads
    them (vid_stride - 1, 2 * vid_stride - 1, ...). A stream ends when it closes."""
    if Path(source).suffix.lower() in IMAGE_EXTS and not is_stream(source):
        img = cv2.imread(source)
        if img is not None:
            yield img, 0, 1, 0
        return
    cap = cv2.VideoCapture(int(source) if source.isnumeric() else source)
    count = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0) // vid_stride
    fps = cap.get(cv2.CAP_PROP_FPS)
    if is_stream(source):  # some streams report rates like 90000 (their clock): the original takes them modulo 100
        fps %= 100
    n = 0
    try:
        while cap.grab():
            n += 1
            if n % vid_stride == 0:
                ok, frame = cap.retrieve()
                if not ok:
                    break
                yield frame, n // vid_stride - 1, count, fps or 30
    finally:
        cap.release()


def output_stem(source, taken):
    """The name of a source's outputs in a run folder: its stem (of the URL's path for a stream, 'stream' if none), or
    with 2, 3, ... added if an earlier source took it (as run folders and crops are named): same-named inputs from
    different folders each keep their image and labels. taken: the stems so far, this one added."""
    stem = Path(urllib.parse.urlsplit(source).path if is_stream(source) else source).stem or 'stream'
    new, n = stem, 2
    while new in taken:
        new, n = f'{stem}{n}', n + 1
    taken.add(new)
    return new


def save_image(img, path):
    """img written to path (atomically), as .jpg where OpenCV has no writer for the format (.mpo, .dng); returns the
    path written. Raises OSError if it cannot be written."""
    path = Path(path).with_suffix('.jpg') if Path(path).suffix.lower() in ('.mpo', '.dng') else Path(path)
    tmp = path.with_name(f'.{path.stem}.tmp{path.suffix}')  # the suffix picks OpenCV's writer
    try:
        if not cv2.imwrite(str(tmp), img):
            raise OSError('OpenCV could not write it')
        os.replace(tmp, path)
    except (OSError, cv2.error) as e:
        tmp.unlink(missing_ok=True)
        raise OSError(f'{path}: cannot save ({str(e).strip().splitlines()[-1]})') from None
    return path


def save_text(text, path):
    """text written to path atomically: a crash leaves the old file or the new one."""
    tmp = Path(f'{path}.tmp')
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(f'{path}: cannot save ({e.strerror})') from None


def save_crop(img, xyxy, path):
    """The box's region of img, 2% and 10 pixels larger (as the original's crops), to path or, if taken, to path
    with 2, 3, ... added to its stem. Raises OSError if it cannot be written."""
    b = xyxy2xywh(torch.tensor(xyxy, dtype=torch.float32).view(1, 4))
    b[:, 2:] = b[:, 2:] * 1.02 + 10
    x1, y1, x2, y2 = xywh2xyxy(b).long()[0].tolist()
    x1, x2 = (min(max(x, 0), img.shape[1]) for x in (x1, x2))  # inside the image
    y1, y2 = (min(max(y, 0), img.shape[0]) for y in (y1, y2))
    crop = img[y1:y2, x1:x2]
    path.parent.mkdir(parents=True, exist_ok=True)
    new, n = path, 2
    while new.exists():
        new, n = path.with_stem(f'{path.stem}{n}'), n + 1
    return save_image(crop, new)


def stop_on_ctrl_c():
    """An event that Ctrl-C sets instead of raising KeyboardInterrupt, so that a loop can end after its current step
    (a video written so far is then finalized). A second Ctrl-C stops the program at once."""
    stop = threading.Event()

    def handler(*_):
        stop.set()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGINT, handler)
    return stop


def show_batch(dataset_class, collate, hyp, argv=None):
    """python data.py DATASET [--img 640] [--batch 16] [--names FILE] [--out FILE]: one augmented batch with its
    labels as a picture (data.py's classes passed in: this module imports none of the project)."""
    p = argparse.ArgumentParser()
    p.add_argument('data')
    p.add_argument('--img', type=number(int, 32), default=640)
    p.add_argument('--batch', type=number(int, 1), default=16)
    p.add_argument('--seed', type=number(int, 0), default=0)
    p.add_argument('--names', type=existing_file, default=None)
    p.add_argument('--out', default='train_batch.jpg')
    a = p.parse_args(argv)
    spec = or_exit(data_spec, a.data)
    names = read_names(a.names) if a.names else spec['names'] or read_names()
    ds = or_exit(dataset_class, spec['train'], a.img, a.batch, augment=True, hyp=hyp, nc=len(names), seed=a.seed)
    imgs, labels, _, _ = collate([ds[i] for i in range(min(a.batch, len(ds)))])
    plot_batch(imgs, labels, names, a.out)
    print(f'{len(imgs)} augmented images with {len(labels)} labels written to {a.out}')


# ---------------------------------------------------------------------------------------------- command line
def key_number(known, not_used=None):
    """An argparse type: KEY=NUMBER with KEY one of known's (--hyp lr0=0.02), or a YAML file of `key: number` lines
    (the original's hyp files), whose keys in not_used {key: why} are left out with a message. [(key, value), ...]."""
    def pair(key, value, where):
        if key in (not_used or {}):
            print(f'{where}: {key} is not used: {not_used[key]}', file=sys.stderr)
            return []
        if key not in known:
            raise argparse.ArgumentTypeError(f'{where}: unknown key {key!r}; known: {", ".join(known)}')
        try:
            return [(key, float(value))]
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f'{where}: {key}: {value!r} is not a number') from None

    def parse(text):
        if '=' in text:
            key, _, value = text.partition('=')
            return pair(key, value, repr(text))
        try:
            entries = read_yaml(text)
        except (OSError, ValueError) as e:
            raise argparse.ArgumentTypeError(f'{text!r} is not KEY=NUMBER nor a readable YAML file ({e})') from None
        return [kv for key, value in entries.items() for kv in pair(key, value, text)]
    return parse


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
    """fn(*args, **kwargs), where a bad input or file (ValueError, OSError) ends the program with its message."""
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError) as e:
        raise SystemExit(f'ERROR: {e}')


def check_img_size(img, floor=0, stride=32):
    """img rounded up to a multiple of the stride (the 3 levels' feature maps must align), and at least floor."""
    new = max(-(-img // stride) * stride, floor)
    if new != img:
        at_least = f' and >= {floor}' if floor else ''
        print(f'WARNING: --img {img} must be a multiple of {stride}{at_least}, using {new}')
    return new


AMP_TYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16, 'off': None}


def amp_choice(device, amp='auto'):
    """(16-bit type, or None for fp32; why) for --amp auto, fp16, bf16 or off on device. auto is fp16 on CUDA, and
    bf16 on a CPU only with AMX. Measured with yolov5n: bf16 1.8x faster than fp32 on a CPU with AMX, but slower on
    one with AVX512-BF16 alone (training 10% slower, a 640 forward 49 ms against 39 ms): that flag does not decide."""
    if amp != 'auto':
        return AMP_TYPES[amp], f'--amp {amp}'
    if device.type == 'cuda':
        return torch.float16, 'auto: CUDA'
    if torch.cpu._is_amx_tile_supported():
        return torch.bfloat16, 'auto: this CPU has AMX'
    return None, 'auto: this CPU has no AMX, where bf16 is slower than fp32'


def half_dtype(device):
    """--half's 16-bit type: --amp auto's (None, fp32, where 16 bits would be slower)."""
    return amp_choice(device)[0]


def clock(device):
    """time.perf_counter() once device has done the work queued on it: CUDA runs behind Python, so a clock read
    without waiting times the queueing, not the work."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter()


def select_device(device='', local_rank=None):
    """'' (CUDA if there is one), 'cpu', '0', 'cuda:1', or '0,1'. One process takes the first GPU named (train.py
    starts one process per GPU itself); under torchrun each takes its own, the LOCAL_RANK-th: --device 2,3 runs on
    GPUs 2 and 3, and without --device on GPUs 0, 1, ... Raises ValueError for a device that is not here."""
    local_rank = int(os.getenv('LOCAL_RANK', -1)) if local_rank is None else local_rank
    device = str(device).strip().lower().replace('cuda:', '').replace('cuda', '0')  # cuda: cuda:0
    if device == 'cpu' or (not device and not torch.cuda.is_available()):
        return torch.device('cpu')
    ids = device.split(',') if device else [str(i) for i in range(torch.cuda.device_count())]
    if not all(i.isdigit() for i in ids):
        raise ValueError(f'{device!r} is not cpu, a GPU index (0, 1, ...) or a list of them (0,1)')
    if max(map(int, ids)) >= torch.cuda.device_count():
        raise ValueError(f'{device!r}: no such CUDA device here ({torch.cuda.device_count()} found); try cpu')
    if local_rank >= len(ids):
        raise ValueError(f'{device or "all GPUs"!r}: {len(ids)} GPU(s) for more processes on this machine '
                         f'(LOCAL_RANK {local_rank}): torchrun --nproc_per_node {len(ids)}')
    return torch.device('cuda', int(ids[max(local_rank, 0)]))


# argparse types of the scripts' flags: a bad value ends the program with a message naming the flag, exit code 2
def device_name(text):
    try:
        select_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def checkpoint_file(text):
    if not zipfile.is_zipfile(text):  # every PyTorch checkpoint is a zip archive
        why = 'not a checkpoint (.pt)' if os.path.exists(text) else 'no such file'
        raise argparse.ArgumentTypeError(f'{text}: {why}')
    return text


def weights_file(text):
    """'' (none), an official name (downloaded if missing), a checkpoint, or an exported .torchscript or .onnx."""
    if text.endswith(('.torchscript', '.onnx')):
        return existing_file(text)
    return text if not text or os.path.basename(text) in OFFICIAL else checkpoint_file(text)
