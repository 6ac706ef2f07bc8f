"""Baseline models for ``gridtwin evaluate`` (BP/LSTM predictors, ANN/BP PV forecaster)."""
