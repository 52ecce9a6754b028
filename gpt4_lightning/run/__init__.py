"""The application layer: a composed config becomes a run (`build`: module, data, trainer), checked before any work
(`checks`: devices and trainer; `preflight`: the memory plan against this machine). The CLI and the sweeper call it;
nothing below imports it."""
