"""Targets for the patching tests (a module of our own, imported on purpose)."""


def double(x: int) -> int:
    """Return twice x."""
    return 2 * x


class Base:
    def greet(self) -> str:
        return "base"

    @classmethod
    def make(cls) -> str:
        return cls.__name__


class Child(Base):
    pass
