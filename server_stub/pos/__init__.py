"""The POS return station (see station.py)."""

from server_stub.pos.station import StationConfig, Store, close_station, create_station

__all__ = ["StationConfig", "Store", "close_station", "create_station"]
