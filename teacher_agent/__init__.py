"""M2KT teacher agent."""
