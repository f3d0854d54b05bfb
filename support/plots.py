"""
Every picture, drawn with OpenCV (no matplotlib): boxes with labels, batches, charts with axes,
results.png, the PR and F1 curves, the confusion matrix and labels.jpg; and `python data.py`'s batch.
"""
import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

from support.cli import existing_file, number, or_exit
from support.data_yaml import data_spec
from support.datasets import read_names, xywh2xyxy
from support.files import save_image, save_text
from support.results import read_results


def save_picture(img, path):
    """A picture written atomically; one that cannot be written is a warning: the run goes on."""
    try:
        save_image(img, path)
    except OSError as e:
        print(f'WARNING: {e}', file=sys.stderr)


PALETTE = [tuple(int(h[i:i + 2], 16) for i in (4, 2, 0)) for h in (  # BGR, the original's 20 colours
    'FF3838', 'FF9D97', 'FF701F', 'FFB21D', 'CFD231', '48F90A', '92CC17', '3DDB86', '1A9334', '00D4BB',
    '2C99A8', '00C2FF', '344593', '6473FF', '0018EC', '8438FF', '520085', 'CB38FF', 'FF95C8', 'FF37C7')]


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
    save_picture(batch_picture(imgs, labels, names, preds, max_images), path)


def batch_picture(imgs, labels, names, preds=None, max_images=16):
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
    return grid


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
    save_picture(img, Path(csv_path).with_name('results.png'))


def save_confusion_matrix(matrix, names, folder):
    plot_confusion_matrix(matrix, names, folder / 'confusion_matrix.png')
    order = ', '.join(names)
    header = f'# rows: predicted, columns: true class, in the order: {order}, background (conf 0.25, IoU 0.45)\n'
    rows = ''.join(','.join(f'{v:.0f}' for v in row) + '\n' for row in matrix)
    try:
        save_text(header + rows, folder / 'confusion_matrix.csv')
    except OSError as e:
        print(f'WARNING: {e}', file=sys.stderr)


def plot_confusion_matrix(matrix, names, path):
    """Column-normalized heatmap: where each true class (column) ended up; the last row and column are background."""
    n, m = len(matrix), matrix / np.maximum(matrix.sum(0), 1e-9)
    m, S = m * (m >= 0.005), min(120, 1600 // n) * n  # cells under 0.005 stay blank; values fit while n < 30
    tick = [(i + 0.5, s) for i, s in enumerate([*names, 'background'])][::math.ceil(16 * n / S)]  # 16 pixels apart
    img = np.full((S + 300, S + 290, 3), 255, np.uint8)
    to = chart(img, (240, 50, 240 + S, 50 + S), (0, n), (n, 0), 'Confusion matrix', 'True', 'Predicted', tick, tick, m)
    for i, j in np.argwhere(m > 0) if n < 30 else []:  # white on the dark cells
        put(img, f'{m[i, j]:.2f}', *to(j + 0.5, i + 0.5), 0.5, 0.5, S / n / 110, (255 * (m[i, j] > 0.5),) * 3)
    save_picture(img, path)


def plot_curve(px, curves, mean, names, path, xlabel, ylabel, mean_label):
    """One thin line per class (named up to 20 classes, else grey) and their mean as a thick blue line."""
    img, named = np.full((900, 1200, 3), 255, np.uint8), len(curves) < 21
    to = chart(img, (110, 50, 850, 810), (0, 1), (0, 1), f'{ylabel}-{xlabel} curve', xlabel, ylabel)
    for i, y in enumerate(curves):
        cv2.polylines(img, [to(px, y)], False, HUES[i % 180] if named else (170, 170, 170), 1, AA)
    cv2.polylines(img, [to(px, mean)], False, BLUE, 4, AA)
    for k, s in enumerate([mean_label] + (names[:len(curves)] if named else [])):  # the legend: its lines' colours
        put(img, s, 870, 60 + 26 * k, 0, 0.5, 0.55, HUES[(k - 1) % 180] if k else BLUE)
    save_picture(img, path)


def plot_pr_f1(curves, f1, names, map50, folder):
    """PR_curve.png and F1_curve.png of validation's curves (train.ap_per_class), f1 the smoothed mean."""
    px = curves['px']
    plot_curve(px, curves['pr'], curves['pr'].mean(0), names, folder / 'PR_curve.png', 'Recall', 'Precision',
               f'all classes {map50:.3f} mAP@0.5')
    plot_curve(px, curves['f1'], f1, names, folder / 'F1_curve.png', 'Confidence', 'F1',
               f'all classes {f1.max():.2f} at {px[f1.argmax()]:.3f}')


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
    save_picture(img, path)


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
    names = or_exit(read_names, a.names) if a.names else spec['names'] or read_names()
    ds = or_exit(dataset_class, spec['train'], a.img, a.batch, augment=True, hyp=hyp, nc=len(names), seed=a.seed)
    imgs, labels, _, _ = collate([ds[i] for i in range(min(a.batch, len(ds)))])
    out = or_exit(save_image, batch_picture(imgs, labels, names), a.out)  # said written once it is
    print(f'{len(imgs)} augmented images with {len(labels)} labels written to {out}')


def plot_study(sizes, rows, path):
    """study.png of --task study's rows (save_study's columns): mAP50 and mAP50-95 against image size, then the
    inference time per image against image size."""
    rows = np.array(rows, dtype=np.float64).reshape(len(sizes), -1)
    sizes = np.array(sizes, dtype=np.float64)
    img = np.full((600, 1300, 3), 255, np.uint8)
    xlim = (sizes.min() - 64, sizes.max() + 64)
    to = chart(img, (90, 50, 600, 520), xlim, (0, max(rows[:, 2].max(), 0.01) * 1.1), 'mAP', 'image size')
    cv2.polylines(img, [to(sizes, rows[:, 2])], False, ORANGE, 2, AA)
    cv2.polylines(img, [to(sizes, rows[:, 3])], False, BLUE, 2, AA)
    put(img, 'mAP50 (orange), mAP50-95 (blue)', 345, 560, 0.5, 0, 0.55)
    to = chart(img, (740, 50, 1250, 520), xlim, (0, max(rows[:, 8].max(), 0.01) * 1.1), 'inference (ms/image)',
               'image size')
    cv2.polylines(img, [to(sizes, rows[:, 8])], False, BLUE, 2, AA)
    save_picture(img, path)
