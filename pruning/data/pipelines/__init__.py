"""The image pipelines, one per module: each defines a :class:`pruning.data._pipeline.Pipeline`
subclass with a ``name`` and is imported when a folder is first loaded (``_pipeline.pipelines``)."""
