"""Local rules and alarm management (pure logic: events in, actions out)."""
