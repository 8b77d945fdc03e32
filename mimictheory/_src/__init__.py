"""Private implementation of mimictheory; the public API is `mimictheory` itself."""
