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


def keywords(text: str, *, sep: str = ",", limit: int = -1) -> list[str]:
    """Split text (keyword-only parameters)."""
    return text.split(sep, limit)


def _decorate(function):  # type: ignore[no-untyped-def]
    def decorated(*args, **kwargs):  # type: ignore[no-untyped-def]
        return function(*args, **kwargs)

    decorated.__name__ = decorated.__qualname__ = function.__name__
    return decorated


@_decorate
def closure(x: int) -> int:
    """A function with a free variable (a decorator's closure), at its canonical place."""
    return x + 1


alias = double  # the same function under a second name


def numbers(n: int):  # type: ignore[no-untyped-def]
    """A generator function."""
    yield from range(n)


class Codec:
    @staticmethod
    def decode(data: bytes) -> str:
        return data.decode()

    @classmethod
    def name(cls) -> str:
        return cls.__name__
