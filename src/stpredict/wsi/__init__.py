"""Whole slides and single images: tiling, trained models applied to new images.

Modules
-------
``slides``
    The slide table (``wsi.slides``), opening a slide, its pixel size and the pyramid level
    the models read (:func:`~stpredict.wsi.slides.choose_level`).
``tiles``
    The tile grid, ST-Net's background rule and :func:`~stpredict.wsi.tiles.tile_slide`, which
    cuts the tiles through the spot extractor into a patch store.
``card``
    What travels with an experiment's models (``results/experiments/{experiment}/model.json``:
    fold models, gene set, target transform, patch geometry, µm/px) and reading a model folder.
``predict``
    :func:`~stpredict.wsi.predict.predict_image`: a trained model folder and an H&E image (with
    or without spots) to a predicted AnnData; the ``predict_slide`` rule and the ``stpredict
    predict`` command call it.
``pool``
    :func:`~stpredict.wsi.pool.tile_pool_slide`: a slide tiled at a round experiment's own
    geometry for the ``wsi`` source of the semi-supervised pool (rule ``tile_pool_slide``).
"""
