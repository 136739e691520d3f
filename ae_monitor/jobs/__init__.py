"""Offline jobs behind the CLI: train, calibrate, score, evaluate and the embedded demo.

Each job wires the same stages the streaming pipeline uses (features, scorer, window grouping, calibration), so a
window scored offline has the value it has when streamed.
"""
