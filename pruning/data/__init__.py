"""The data seam: everything else in the project reads images through this interface.

A :class:`Dataset` is a source of batches per split (``train_batches``, ``eval_batches``,
``Dataset.inputs``), with its counts and labels (``count``, ``labels``), an example input and the
:class:`~pruning.Preprocessing` a deployment repeats. Behind it:

- ``_dataset``: the cached splits (uint8 tensors on the training device) and their batching,
  augmentation and normalization as tensor ops;
- ``_files``: image files decoded safely, and :class:`StreamedImages`, a split too large for the
  cache decoded batch by batch;
- ``_pipeline`` and ``pipelines/``: how a folder's splits are held, one pipeline per module
  (``cached``: decoded once into a tensor when they fit the cache; ``streamed``: from their files);
  the folder loader takes the highest-ranked pipeline that wants the folder;
- ``_folder``: an image folder scanned, checked and handed to its pipeline;
- ``_builtin``: the built-in datasets and :func:`load_dataset`, the one way a study gets data;
- ``_splits``: the stratified draw, the validation split, the channel statistics.

A new pipeline (a GPU decoder) is one new module in ``pipelines/`` (a ``Pipeline`` subclass with a
``name``, a ``rank`` and ``wants``; its split object has what :class:`StreamedImages` has: ``batches``,
``select``, ``to``, ``shape``, ``device``, indexing) and its test; nothing else names it: the modules
register by being imported, and the batching code asks only "a tensor or not"
(``tests/pruning/test_imagefolder.py`` plugs a pipeline of its own in). Nothing outside this package
reads a split's tensors (``tests/search/test_structure.py`` holds it).
"""
from pruning.data._builtin import AUGMENTATIONS, DATASETS, load_dataset, synthetic_splits
from pruning.data._dataset import Dataset, eval_batches, train_batches
from pruning.data._files import StreamedImages
from pruning.data._splits import stratified_indices

__all__ = ["AUGMENTATIONS", "DATASETS", "Dataset", "StreamedImages", "eval_batches", "load_dataset",
           "stratified_indices", "synthetic_splits", "train_batches"]
