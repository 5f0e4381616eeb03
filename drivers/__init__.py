"""Field-protocol drivers. Each knows its wire and the data model, nothing of MQTT or storage."""
