"""Field links: the twin's protocol clients (OPC UA, Modbus TCP) behind one FieldLink API."""

from hil.links.base import FieldLink

__all__ = ["FieldLink"]
