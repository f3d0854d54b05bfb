"""
The support code under the five stages (data.py, model.py, loss.py, train.py, detect.py): nothing here is
object detection, and a first read skips it. Each file holds one concern; the stages import from them, and
they never import a stage.

  files.py        writing files atomically (checkpoints, pictures, text), with clear errors
  cli.py          command-line types, devices, the mixed-precision choice, the console's progress line
  datasets.py     image and label files on disk: finding, checking and caching them; class names; box formats
  downloads.py    fetching files (mirrors, resume) and unpacking zips into ../datasets
  data_yaml.py    data YAMLs (a small YAML reader) and the datasets known by name
  checkpoints.py  checkpoints on disk: the original's pickles read without its code, ours, stripping
  runs.py         run folders, resume and torchrun restarts, how a stopped run ends
  results.py      results.csv and COCO JSON results
  plots.py        every picture: boxes, batches, charts, results.png, curves, confusion matrix, labels.jpg
  sources.py      detect.py's inputs (files, videos, webcams, streams) and outputs (labels, crops)
"""
