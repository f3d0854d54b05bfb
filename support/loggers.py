"""
Experiment logging: TensorBoard events of a training run (every number of results.csv by its name, each epoch, and
the run's pictures at the end), when the optional tensorboard package is installed; silent without it.
"""
import importlib.util
import sys
from pathlib import Path

import cv2


class TensorBoard:
    def __init__(self, folder):
        self.writer = None
        if importlib.util.find_spec('tensorboard') is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(folder))
        except Exception as e:  # an install that does not import, or a folder it cannot write: no events
            print(f'WARNING: TensorBoard: {type(e).__name__}: {e}; no events written', file=sys.stderr)
            return
        print(f"TensorBoard: Start with 'tensorboard --logdir {Path(folder).parent}', view at http://localhost:6006/")

    def add_row(self, row):
        """An epoch's row of results.csv: each number under its column's name."""
        for name, value in row.items() if self.writer else ():
            if name != 'epoch':
                self.writer.add_scalar(name, value, row['epoch'])
        if self.writer:
            self.writer.flush()

    def add_pictures(self, folder, epoch):
        """The run's pictures (results, labels, batches, curves, confusion matrix), each under its file name."""
        for path in sorted(Path(folder).glob('*.[jp][pn]g')) if self.writer else ():
            img = cv2.imread(str(path))
            if img is not None:
                self.writer.add_image(path.stem, img[..., ::-1].copy(), epoch, dataformats='HWC')
        if self.writer:
            self.writer.close()
