"""gridtwin scenarios: SimPy scenario files, the engine, events, profiles, checks and sweeps."""
