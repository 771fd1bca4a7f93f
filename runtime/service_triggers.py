"""Placeholder replaced when the event triggers are wired."""


async def start_triggers(service):
    return None
