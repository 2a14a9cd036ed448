"""M2KT student agent."""
