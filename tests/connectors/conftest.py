"""Connector tests use the simulated farm fixtures of tests/sim."""

from tests.sim.conftest import farm, mqtt_broker

__all__ = ["farm", "mqtt_broker"]
