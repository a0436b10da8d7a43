"""Gateways to legacy equipment: OPC UA and Modbus TCP connectors, configured per device.

Other domains use `ConnectorManager` (on `app.state.connectors`) and the connector types
registered under the `ecoplat.connectors` entry points (`connector_types()`)."""
