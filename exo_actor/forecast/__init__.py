"""Forecasts of a cluster's speed before it exists: `exo-actor plan`, /v1/plan and the dashboard's panel."""

from .calibrate import calibrate, calibration_path, load_calibration, save_calibration
from .cost import Calibration, Device, Forecast, ForecastError, Link, Workload, forecast, place
from .workload import QUANTS, workload

__all__ = [
    "QUANTS",
    "Calibration",
    "Device",
    "Forecast",
    "ForecastError",
    "Link",
    "Workload",
    "calibrate",
    "calibration_path",
    "forecast",
    "load_calibration",
    "place",
    "save_calibration",
    "workload",
]
