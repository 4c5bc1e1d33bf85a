"""Pure rules shared by the SDK and the reference server: no I/O, no clocks, no globals."""
