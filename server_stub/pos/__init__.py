"""The POS return station (see station.py)."""

from server_stub.pos.station import StationConfig, Store, create_station

__all__ = ["StationConfig", "Store", "create_station"]
