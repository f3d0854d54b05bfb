"""
Image and label files on disk: finding a split's images, reading and checking their label files (rows
`class xc yc w h`, normalized, or polygons), image sizes as OpenCV decodes them, a cache of all that beside
the labels, class names, and the box formats. What training makes of the images is data.py's.
"""
import glob
import hashlib
import itertools
import math
import multiprocessing
import os
import re
import sys
import time
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from support.console import print_count
from support.files import WriteError, replacing

IMAGE_EXTS = {'.bmp', '.dng', '.jpeg', '.jpg', '.mpo', '.png', '.tif', '.tiff', '.webp', '.pfm'}
CACHE_VERSION = 3  # 2: PNG and TIFF read, class indices bounded; 3: a class that is not an index refuses the dataset
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


def xywh2xyxy(x):
    cat = torch.cat if isinstance(x, torch.Tensor) else np.concatenate
    return cat((x[..., :2] - x[..., 2:4] / 2, x[..., :2] + x[..., 2:4] / 2), -1)


def xyxy2xywh(x):
    cat = torch.cat if isinstance(x, torch.Tensor) else np.concatenate
    return cat(((x[..., :2] + x[..., 2:4]) / 2, x[..., 2:4] - x[..., :2]), -1)


def label_text(det, shape, conf=False):
    """Detections (n, 6) [x1, y1, x2, y2, conf, cls] in pixels of an image of shape (h, w, ...) as YOLO label rows
    `cls xc yc w h [conf]`, normalized, '%g' as the original writes them."""
    gain = torch.tensor([shape[1], shape[0]] * 2, device=det.device, dtype=torch.float32)
    rows = torch.cat((det[:, 5:], xyxy2xywh(det[:, :4]) / gain, det[:, 4:5]), 1).tolist()
    columns = 6 if conf else 5
    return ''.join(' '.join(f'{v:g}' for v in row[:columns]) + '\n' for row in rows)


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
    head, sep, tail = (os.sep + img_path).rpartition(f'{os.sep}images{os.sep}')  # (images/ first: a relative root)
    return os.path.splitext(f'{head}{os.sep}labels{os.sep}{tail}'[1:] if sep else img_path)[0] + '.txt'


class ClassIndexError(ValueError):
    """A label row whose class is not an index: not an integer from 0 to MAX_CLASSES - 1. Not a corrupt file to
    leave out but a dataset to fix, as a class the dataset does not have."""
    def __init__(self, where, value):
        super().__init__(f'{where}: class {value:g} is not a class index')
        self.where = where
        self.value = value


def out_of_range(where, value, nc):
    """The one message for a label's class that the dataset does not have."""
    return ValueError(f'{where}: class {value:g} is out of range: the dataset has {nc} classes (0-{nc - 1}); fix the '
                      f'label or give the right --names')


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
            raise ClassIndexError(f'{path}:{n}', v[0])
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
    except ClassIndexError as e:  # not a corrupt file: the dataset is refused
        return img, None, None, [], (e.where, e.value)
    except Exception as e:  # PIL raises many kinds for a corrupt file
        return img, None, None, [f'{img}: ignoring corrupt image/label: {e}'], None
    return img, (w, h), labels, [f'{img}: truncated JPEG, it decodes and is kept'] * truncated + msgs, None


def files_hash(paths):
    stats = [os.stat(p) if os.path.exists(p) else None for p in paths]
    text = ''.join(f'{p}|{s.st_size if s else -1}|{s.st_mtime_ns if s else -1}\n' for p, s in zip(paths, stats))
    return hashlib.sha256(text.encode()).hexdigest()


def available_memory():
    """Bytes the system can still give (Linux's MemAvailable); None where it does not say."""
    meminfo = Path('/proc/meminfo')
    return int(re.search(r'MemAvailable:\s+(\d+)', meminfo.read_text())[1]) * 1024 if meminfo.exists() else None


def fits_in_memory(size, copies):
    """Whether copies (one a loader worker) of size bytes need under a tenth of the free memory."""
    return size * copies < 0.1 * (available_memory() or 0)


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


def loader_workers(workers, batch_size, world_size=1, cpu=False):
    """A loader's worker processes: workers, or if None up to 8 beside a GPU and, beside a CPU that computes (cpu),
    the cores its threads leave: none on 2 cores (measured: there they slow the steps more than they help). Never more
    than the batch or this process's share of the cores, as the original."""
    if workers is None:
        workers = max(os.cpu_count() // world_size - torch.get_num_threads(), 0) if cpu else 8
    return min(os.cpu_count() // world_size, batch_size if batch_size > 1 else 0, workers)


def image_weights(labels, nc, maps):
    """--image-weights: each image's chance to be drawn, as the original's: the sum over its labels of its classes'
    weights, a class's weight the inverse of its frequency times (1 - its mAP) ** 2 (maps: per class, the last
    validation's): images of rare classes and of classes still poorly found come more often."""
    counts = np.bincount(np.concatenate(labels)[:, 0].astype(int), minlength=nc).astype(float)
    counts[counts == 0] = 1  # (a class without labels: as if it had one)
    class_weights = 1 / counts
    class_weights = class_weights / class_weights.sum() * nc * (1 - np.asarray(maps)) ** 2 / nc
    per_image = np.array([np.bincount(lb[:, 0].astype(int), minlength=nc) @ class_weights for lb in labels])
    return per_image / per_image.sum() if per_image.sum() > 0 else np.full(len(labels), 1 / len(labels))


def weighted_draws(weights, seed, epoch):
    """--image-weights' indices of an epoch: len(weights) draws by them, with replacement, seeded by (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    return rng.choice(len(weights), len(weights), p=weights).tolist()


def npy_path(image):
    return Path(image).with_suffix('.npy')  # as the original's --cache disk


def cache_to_disk(files, prefix=''):
    """--cache disk: each image decoded once into an .npy beside it (as the original), unless one newer than it is
    there; decoding is then a read. Returns whether all could be written (a read-only dataset: a warning)."""
    todo = [f for f in files if not npy_path(f).exists() or os.path.getmtime(npy_path(f)) < os.path.getmtime(f)]
    size = 0
    try:
        for f in todo:
            img = cv2.imread(f)
            if img is not None:
                with replacing(npy_path(f)) as tmp, open(tmp, 'wb') as out:
                    np.save(out, img)
                size += img.nbytes
    except OSError as e:
        print(f'{prefix}WARNING: --cache disk: {e}; decoding the images instead', file=sys.stderr)
        return False
    print(f'{prefix}Cached {len(todo)} images on disk ({size / 1e9:.1f} GB), {len(files) - len(todo)} were there')
    return True


def load_npy(image):
    """An image's --cache disk decode, or None (gone, or damaged: it is decoded again then)."""
    try:
        img = np.load(npy_path(image), allow_pickle=False)
        return img if img.ndim == 3 and img.dtype == np.uint8 else None
    except (OSError, ValueError):
        return None


def decode_image(path, size, on_disk=False, long_side=None):
    """An image file as BGR and its (w, h) at full size; (None, None) if it does not decode. on_disk (--cache disk):
    read from its .npy. long_side: a JPEG is decoded at 1/2, 1/4 or 1/8 of its size (OpenCV's reduced decode, 2x
    faster) where that still leaves its long side at least long_side; size: its (w, h), from the scan."""
    img = load_npy(path) if on_disk else None
    reduction = 1
    if img is None and long_side:
        reduction = max([factor for factor in (2, 4, 8) if factor * long_side <= max(size)], default=1)
    if img is None:
        mode = getattr(cv2, f'IMREAD_REDUCED_COLOR_{reduction}') if reduction > 1 else cv2.IMREAD_COLOR
        img = cv2.imread(path, mode)
    if img is None:
        return None, None
    return img, (tuple(size) if reduction > 1 else img.shape[1::-1])


def quads(batch):
    """--quad, the original's: a loader batch of 4n images (collate's) as n samples at twice the size, each 4 images
    in a 2x2 grid, or (half of them) the first of the 4 enlarged 2x. The draw follows the batch's files: repeatable.
    A last batch of 1 to 3 images (the original's would fail) gives each of them enlarged."""
    imgs, labels, paths, to_orig = batch
    if len(imgs) < 4:
        big = torch.nn.functional.interpolate(imgs.float(), scale_factor=2.0, mode='bilinear', align_corners=False)
        return big.type(imgs.dtype).contiguous(memory_format=torch.channels_last), labels, paths, to_orig
    seed = int.from_bytes(hashlib.sha256(''.join(paths).encode()).digest()[:8], 'little')
    rng = np.random.default_rng(seed)
    below = torch.tensor([[0.0, 0, 0, 1, 0, 0]])  # label offsets of the lower and right images, then the scale
    right = torch.tensor([[0.0, 0, 1, 0, 0, 0]])
    half = torch.tensor([[1, 1, 0.5, 0.5, 0.5, 0.5]])
    out_imgs, out_labels = [], []
    for k in range(len(imgs) // 4):
        i = 4 * k
        own = [labels[labels[:, 0] == j] for j in range(i, i + 4)]
        if rng.random() < 0.5:
            img = torch.nn.functional.interpolate(imgs[i][None].float(), scale_factor=2.0, mode='bilinear',
                                                  align_corners=False)[0].type(imgs.dtype)
            lb = own[0]
        else:
            img = torch.cat((torch.cat((imgs[i], imgs[i + 1]), 1), torch.cat((imgs[i + 2], imgs[i + 3]), 1)), 2)
            lb = torch.cat((own[0], own[1] + below, own[2] + right, own[3] + below + right)) * half
        lb[:, 0] = k  # its sample in the batch
        out_imgs.append(img)
        out_labels.append(lb)
    n = len(out_imgs)
    return torch.stack(out_imgs).contiguous(memory_format=torch.channels_last), torch.cat(out_labels), paths[:n], \
        to_orig[:n]


def preload(load, n, need, img_size, prefix=''):
    """--cache ram: images 0 to n - 1 decoded now by load(i), in threads (OpenCV lets go of the GIL); refused, with the
    figures, if they need more bytes than memory has free."""
    check_cache_ram(need, available_memory(), n, img_size)
    with ThreadPool(min(8, os.cpu_count() * 2)) as pool:
        images = pool.map(load, range(n))
    megabytes = sum(x[0].nbytes for x in images if x[0] is not None) / 2 ** 20
    print(f'{prefix}Cached {n} images in RAM ({megabytes:.0f} MB)')
    return images


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
        if not _plausible(c['labels'], sizes, len(files)):  # a file like any other: its numbers bounded too
            raise ValueError('damaged cache')
        bad_classes = []
    except Exception:  # no cache, stale or unreadable: scan again
        results = []
        start = time.time()
        with multiprocessing.Pool(min(8, os.cpu_count())) as pool:  # processes: the checks are Python, threads wait
            for result in pool.imap(_scan_one, zip(img_files, label_files), chunksize=64):  # on each other (the GIL)
                results.append(result)
                if len(results) % 64 == 0 or len(results) == len(img_files):
                    print_count(f'{prefix}Scanning {Path(label_files[0]).parent}', len(results) - 1,
                                len(img_files), start)
        kept = [r for r in results if r[1] is not None]
        files, sizes, labels = [r[0] for r in kept], np.array([r[1] for r in kept]).reshape(-1, 2), [r[2] for r in kept]
        bad_classes = [r[4] for r in results if r[4]]
        msgs, how = [m for r in results for m in r[3]], 'Scanned'
        n_corrupt = len(results) - len(kept) - len(bad_classes)
        if not bad_classes:  # (a dataset refused below is not cached)
            _write_cache(cache_path, prefix, version=CACHE_VERSION, hash=key, files=np.array(files), sizes=sizes,
                         msgs=np.array(msgs, str), labels=np.concatenate(labels or [np.zeros((0, 5), np.float32)]),
                         counts=[len(x) for x in labels], corrupt=n_corrupt)
    for m in msgs:
        print(f'{prefix}WARNING: {m}', file=sys.stderr)
    print(f'{prefix}{how} {Path(label_files[0]).parent}: {len(files)} images, {sum(len(x) == 0 for x in labels)} '
          f'backgrounds, {n_corrupt} corrupt, {sum(len(x) for x in labels)} instances')
    if bad_classes:  # one rule for a class, with --single-cls too: an integer the dataset has
        where, value = bad_classes[0]
        raise out_of_range(where, value, nc)
    for f, lb in zip(files, labels):
        if len(lb) and lb[:, 0].max() >= nc and not single_cls:
            raise out_of_range(label_path(f), lb[:, 0].max(), nc)
        if single_cls:  # every object is class 0
            lb[:, 0] = 0
    if not files:
        raise ValueError(f'{prefix}no usable images in {Path(img_files[0]).parent}')
    return files, sizes, labels


def _write_cache(path, prefix, **arrays):
    try:  # the write bits, not os.access: as root os.access says yes even to a read-only dataset
        if not os.stat(path.parent).st_mode & 0o222:
            raise PermissionError(13, 'folder is read-only')
        with replacing(path) as tmp, open(tmp, 'wb') as f:  # DDP ranks may scan at the same time
            np.savez(f, **arrays)
    except OSError as e:
        why = e.reason if isinstance(e, WriteError) else e.strerror
        print(f'{prefix}WARNING: cache {path} not written ({why})', file=sys.stderr)


def _plausible(labels, sizes, n):
    """Whether a cache's numbers are what a scan makes: classes, normalized boxes, image sizes."""
    finite = np.isfinite(labels).all() and np.isfinite(sizes).all()
    return bool(finite and len(sizes) == n and (labels[:, 0] >= 0).all() and (labels[:, 0] < MAX_CLASSES).all()
                and (labels[:, 1:] >= 0).all() and (labels[:, 1:] <= 1).all() and (sizes >= 10).all())


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


def require_labels(labels, files, data):
    """A ValueError if a training set (of data) has no label at all: training would learn nothing."""
    if not sum(len(x) for x in labels):
        raise ValueError(f'no labels found for {data}: every image is a background. Labels are read beside '
                         f'images/, e.g. {label_path(files[0])}')


def read_names(path=None):
    """The class names of a file, one a line (COCO's without one); at most MAX_CLASSES, read as UTF-8."""
    if path is None:
        return list(COCO_NAMES)
    try:
        with open(path, encoding='utf-8-sig') as f:
            lines = [line.strip() for line in itertools.islice(f, MAX_CLASSES + 1)]
    except UnicodeDecodeError as e:
        raise ValueError(f'{path}: not UTF-8 text ({e.reason} at byte {e.start})') from None
    names = [line for line in lines if line]
    if len(lines) > MAX_CLASSES:
        raise ValueError(f'{path}: more than {MAX_CLASSES} lines: not a file of class names')
    if not names:
        raise ValueError(f'{path}: no class names (one per line)')
    return names
