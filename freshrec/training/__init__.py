"""Offline model building: datasets and splits (`data`), training (`train`), ranking metrics
(`metrics`) and `freshrec build` (`build`). Nothing on the serving path imports this package."""
