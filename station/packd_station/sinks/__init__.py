"""Where verdicts go besides the record: MQTT, a webhook (both delivered from the outbox, so nothing is lost while
they are down), and OPC UA server nodes a PLC reads (the latest state, restored from the record at start-up)."""
