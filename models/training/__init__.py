"""Offline model making: datasets, networks, training, ONNX export, threshold calibration.

Nothing here runs live. ``nets``, ``train`` and ``train_pv`` need torch and onnx (the
``train`` extra: ``pip install 'gridtwin[train]'``); ``data``, ``metrics`` and
``train_threshold`` are numpy only, so ``gridtwin evaluate`` reuses them without torch.
This package imports no submodule itself: importing it loads nothing heavy.
"""
