"""
--val-only --task speed and --task study, the original's benchmarks of trained weights: a timed validation at
detect's thresholds, and mAP and speed against the image size (study_*.txt, study.png).
"""
from pathlib import Path

from support.cli import Stopwatch, select_device
from support.files import save_text
from support.plots import plot_study

STUDY_SIZES = list(range(256, 1536 + 128, 128))  # --task study's image sizes, the original's


def run_benchmark(opt, folder, val_once):
    """--val-only --task speed or study, the original's, on the val split, each --weights file alone. speed: a
    validation at detect's thresholds (0.25, 0.45), timed; study: one at each of STUDY_SIZES, into
    study_{data}_{weights}.txt (save_study's columns) and study.png. val_once(weights, plots, watch) validates at
    opt.img and returns (metrics, images)."""
    study = opt.task == 'study'
    opt.task = 'val'
    if not study:
        opt.conf_thres = 0.25
        opt.iou_thres = 0.45
        opt.save_json = False
    for weights in opt.weights if isinstance(opt.weights, list) else [opt.weights]:
        rows = []
        for size in STUDY_SIZES if study else [opt.img]:
            opt.img = size
            watch = Stopwatch(select_device(opt.device))
            metrics, images = val_once(weights, False, watch)
            times = [seconds * 1e3 / images for seconds in watch.totals.values()]  # ms per image
            rows.append([metrics[k] for k in STUDY_METRICS] + [0, 0, 0] + times)  # (no val losses)
        if study:
            save_study(rows, folder / f'study_{Path(opt.data).stem}_{Path(weights).stem}.txt')
            plot_study(STUDY_SIZES, rows, folder / 'study.png')


STUDY_METRICS = ['metrics/precision', 'metrics/recall', 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95']


def save_study(rows, path):
    """--task study's table: a row per image size, the original's columns P R mAP50 mAP50-95, the 3 val losses (0
    here, as the original's), then the ms per image of pre-process, inference and NMS."""
    save_text(''.join(' '.join(f'{v:10.4g}' for v in row) + '\n' for row in rows), path)
    print(f'Saved {path}')
