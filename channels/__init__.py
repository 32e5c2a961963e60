"""Channel adapters behind one interface (channels/base.py), one module per channel, found by name in
the registry (channels/registry.py). See docs/channels.md."""
