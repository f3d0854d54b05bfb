"""
Run YOLOv5 on images, folders, globs, videos or streams:  python detect.py img.jpg [more ...]
Annotated results go to runs/detect/exp (exp2, ...), labels with --save-txt, crops with --save-crop.
"""
import sys
import threading
from pathlib import Path

import torch

from data import letterbox, to_tensor
from export import load_any
from model import non_max_suppression, predict, scale_boxes
from support.cli import Stopwatch, check_img_size, detect_args, half_dtype, or_exit, select_device
from support.cli import unknown_class
from support.datasets import IMAGE_EXTS
from support.files import save_image
from support.runs import run_dir
from support.sources import VideoFile, describe, expand_sources, frame_name, is_stream, output_stem
from support.sources import csv_rows_of, read_frames, save_csv, save_results, stop_on_ctrl_c


def parse_args(argv=None):
    """detect.py's flags, the original's (support/cli.py lists them)."""
    return detect_args(argv, __doc__)


@torch.inference_mode()
def run(opt, stop=None):
    """Returns the exit code. stop: an event that ends the run after the current frame (Ctrl-C)."""
    device = select_device(opt.device)
    model = or_exit(load_any, opt.weights, device, fuse=True, trust=opt.trust_code,
                    img=max(opt.img), augment=opt.augment)
    model = model.to(memory_format=torch.channels_last)  # the fastest layout
    dtype = half_dtype(device) if opt.half else None  # fp32 unless --half: the original's outputs
    names = model.names
    if unknown_class(opt, names):  # (known once the model is loaded)
        return 2
    stride = model.max_stride  # 64 for the P6 models
    sizes = opt.img * 2 if len(opt.img) == 1 else opt.img  # (h, w)
    img_size = [check_img_size(size, stride=stride) for size in sizes]
    save_dir = run_dir(opt.project, opt.name, opt.exist_ok)
    (save_dir / 'labels' if opt.save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    sources = list(expand_sources(opt.source))
    stop = stop or threading.Event()
    stems = set()
    frames_done = 0
    label_files = 0
    csv_rows = []  # --save-csv: a row per detection
    watch = Stopwatch(device)
    for number_of_source, (path, error) in enumerate(sources, 1):
        stem = output_stem(path, stems)  # unique: same-named inputs keep their outputs
        frames_before = frames_done
        video = Path(path).suffix.lower() not in IMAGE_EXTS  # webcams and streams too
        video_file = VideoFile(save_dir / f'{stem}.mp4') if video and not opt.nosave else None
        frames = () if error else read_frames(path, opt.vid_stride)
        for frame, frame_index, frame_count, fps in frames:
            watch.start()
            x = to_tensor(letterbox(frame, img_size, stride=stride)[0])
            x = x.to(device).float()[None] / 255
            watch.lap('pre-process')
            # (an export may fail to run)
            pred = or_exit(next, predict(model, x, dtype, opt.augment))[0]
            inference = watch.lap('inference')
            det = non_max_suppression(pred, opt.conf_thres, opt.iou_thres, opt.classes,
                                      opt.agnostic_nms, max_det=opt.max_det)[0]
            watch.lap('NMS')
            # each row of det: x1 y1 x2 y2 (pixels of the frame) confidence class
            det[:, :4] = scale_boxes(det[:, :4], x.shape[2:], frame.shape[:2]).round()
            where = frame_name(video, number_of_source, len(sources), frame_index, frame_count)
            print(f'{where} {path}: {x.shape[2]}x{x.shape[3]} {describe(det, names)}'
                  f'{inference * 1e3:.1f}ms', flush=True)
            frames_done += 1
            try:
                frame_number = frame_index + 1 if video else None
                # labels and crops, then the boxes drawn on frame, which is saved below
                label_files += save_results(opt, names, save_dir, stem, frame_number, frame, det)
                csv_rows += csv_rows_of(path, det, names) if opt.save_csv else []
                if video_file:
                    video_file.write(frame, fps)
                elif not opt.nosave:
                    save_image(frame, save_dir / (stem + Path(path).suffix))
            except OSError as e:  # reported, and the run goes on
                print(f'ERROR: {e}', file=sys.stderr)
            if stop.is_set():
                break
        if video_file:
            video_file.close()  # the video is complete, also when Ctrl-C stopped it
        if frames_done == frames_before:  # a bad input is reported and skipped: the run goes on
            what = 'open stream' if is_stream(path) else 'decode video' if video else 'decode image'
            print(f'ERROR: {path}: {error or "cannot " + what}, skipped', file=sys.stderr)
        if stop.is_set():
            print(f'Interrupted (Ctrl-C): stopped at {path}', file=sys.stderr)
            break
    if not frames_done:
        print('ERROR: nothing could be processed', file=sys.stderr)
        return 1
    print(watch.speed(frames_done, tuple(x.shape)))
    if opt.save_csv:
        or_exit(save_csv, csv_rows, save_dir / 'predictions.csv')
    if not opt.nosave or opt.save_txt:
        print(f'Results saved to {save_dir}')
        if opt.save_txt:
            print(f'{label_files} labels saved to {save_dir / "labels"}')
    return 130 if stop.is_set() else 0


if __name__ == '__main__':
    sys.exit(run(parse_args(), stop_on_ctrl_c()))
