"""Code shared by every a0 service and by a0ctl: settings, envelope, Kafka clients,
credential store, telemetry and log redaction. It exists once, here."""
