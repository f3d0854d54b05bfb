"""
A run's numbers on disk: results.csv (a row per epoch, its columns matched by name) and validation's
detections as COCO JSON and label files.
"""
import importlib.util
import json
import math
from pathlib import Path

import torch

from support.data_yaml import is_coco
from support.datasets import COCO91_IDS, label_text, xyxy2xywh
from support.files import save_text


def coco_records(det, path):
    """An image's detections (n, 6) [x1, y1, x2, y2, conf, cls] in pixels as COCO results, as the original writes them:
    image_id the file's stem (a number if it is one), bbox [x, y, w, h] to 3 decimals, score to 5."""
    stem = Path(path).stem
    box = xyxy2xywh(det[:, :4])
    box[:, :2] -= box[:, 2:] / 2  # the top left corner
    return [dict(image_id=int(stem) if stem.isdecimal() else stem, category_id=int(d[5]),
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
    evaluation.params.imgIds = [int(Path(f).stem) for f in image_files if Path(f).stem.isdecimal()]
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()


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
    save_text(text, path)  # a crash leaves the old file or the new one, never half of one


def write_results(path, row):
    """Appends row {column: value} to results.csv, columns matched by name. If the columns changed (a metric added
    or removed), the file is written anew with the new header first, each old value under its name (nan if none)."""
    head, rows = read_results(path)
    rows = [[dict(zip(head, r)).get(k, math.nan) for k in row] for r in rows] if head != list(row) else rows
    try:  # the whole file written anew, atomically: a crash leaves the old one or the new one
        _rewrite_results(path, list(row), rows + [list(row.values())])
    except OSError as e:
        raise SystemExit(f'ERROR: {e}: the run stops, its last.pt holds the epoch before') from None


def trim_results(path, start_epoch):
    """Drops the rows of epochs that will run again: a crash came between a row and its checkpoint."""
    head, rows = read_results(path)
    if head:
        _rewrite_results(path, head, [r for r in rows if r[head.index('epoch')] < start_epoch])


class ValOutputs:
    """What --val-only writes of its detections: COCO records (--save-json) and label files (--save-txt), a file per
    image with detections, rows `class xc yc w h [conf]` normalized to the original image, as the original's val.py.
    --save-hybrid: the labels join the detections (validate passes them to the NMS)."""

    def __init__(self, folder, opt):
        self.folder = Path(folder)
        self.records = [] if opt.save_json else None
        self.txt = opt.save_txt or opt.save_hybrid
        self.conf = opt.save_conf
        self.hybrid = opt.save_hybrid
        self.labels = {}  # stem: its file's text, written at the end

    def hybrid_rows(self, labels, first, pred):
        """--save-hybrid: per image of the chunk pred (b, N, 5 + nc) of a batch, from its image first on, its labels
        (n, 6) [image, class, xywh] (pixels) as rows of pred: the box, objectness 1, its class's score 1."""
        nc = pred.shape[2] - 5
        out = []
        for i in range(first, first + len(pred)):
            own = labels[labels[:, 0] == i]
            rows = torch.zeros((len(own), 5 + nc), device=labels.device)
            rows[:, :4] = own[:, 2:6]
            rows[:, 4] = 1.0
            rows[range(len(rows)), own[:, 1].long() + 5] = 1.0
            out.append(rows)
        return out

    def add(self, det, path, shape):
        """An image's detections (n, 6) in pixels of the original image of shape (h, w)."""
        if self.records is not None:
            self.records += coco_records(det, path)
        if self.txt and len(det):
            self.labels[Path(path).stem] = label_text(det, shape, self.conf)

    def save(self, weights, data, image_files):
        """The files, at the end: the JSON named for the (first) weights file, as the original's."""
        stem = Path(weights if isinstance(weights, str) else weights[0]).stem
        if self.records is not None:
            save_coco_json(self.records, self.folder / f'{stem}_predictions.json', data, image_files)
        if self.txt:
            (self.folder / 'labels').mkdir(parents=True, exist_ok=True)
        for stem, text in self.labels.items() if self.txt else ():
            save_text(text, self.folder / 'labels' / f'{stem}.txt')
        if self.txt:
            print(f'{len(self.labels)} labels saved to {self.folder / "labels"}')
