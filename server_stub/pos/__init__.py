"""The POS return station (see station.py)."""

from server_stub.pos.station import StationConfig, create_station

__all__ = ["StationConfig", "create_station"]
