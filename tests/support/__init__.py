"""What the tests share: servers, fixtures' helpers, apps the tests run."""
