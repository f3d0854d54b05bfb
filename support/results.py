"""
A run's numbers on disk: results.csv (a row per epoch, its columns matched by name) and validation's
detections as COCO JSON.
"""
import importlib.util
import json
import math
from pathlib import Path

from support.data_yaml import is_coco
from support.datasets import COCO91_IDS, xyxy2xywh
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
