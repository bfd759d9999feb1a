"""The market library: what the simulator service and the trainer both trade on.

Not a service: it runs no process and talks to no broker, and it never imports a service
(a test checks). Its public API is what this module exports; the modules behind it are:

- `market_data`: daily price CSVs, validated (`load_prices_csv`);
- `regime_market`: RLMF's regime-switching synthetic market (`generate_market`, `load_params`);
- `news_series`: news files bucketed onto bars (sentiment and summary per bar, no look-ahead);
- `accounting`: fills, fees and net worth, exact to the cent (`ExecutionConfig`, `RewardConfig`);
- `envs`: gymnasium environments (discrete, continuous, portfolio);
- `performance`: CR, Sharpe, drawdown and the rest, always beside Buy & Hold;
- `baseline_policies`: the `Policy` protocol, Buy & Hold, the sentiment rule, random, HTTP;
- `backtest`: a policy over a price frame, with its metrics (`run_backtest`);
- `report`: the charts and HTML page of a backtest (imported on its own: it loads matplotlib).
"""

from services.market.accounting import ExecutionConfig, RewardConfig
from services.market.backtest import BacktestResult, run_backtest, run_policy
from services.market.baseline_policies import (
    BuyAndHold,
    HttpPolicy,
    Policy,
    RandomPolicy,
    SentimentRule,
    make_policy,
)
from services.market.envs import ContinuousTradingEnv, DiscreteTradingEnv, PortfolioEnv
from services.market.market_data import MarketDataError, load_prices_csv
from services.market.news_series import bucket_news, load_news_file
from services.market.performance import compute_metrics, period_returns, sharpe
from services.market.regime_market import MarketParams, generate_market, load_params

__all__ = [
    "BacktestResult",
    "BuyAndHold",
    "ContinuousTradingEnv",
    "DiscreteTradingEnv",
    "ExecutionConfig",
    "HttpPolicy",
    "MarketDataError",
    "MarketParams",
    "Policy",
    "PortfolioEnv",
    "RandomPolicy",
    "RewardConfig",
    "SentimentRule",
    "bucket_news",
    "compute_metrics",
    "generate_market",
    "load_news_file",
    "load_params",
    "load_prices_csv",
    "make_policy",
    "period_returns",
    "run_backtest",
    "run_policy",
    "sharpe",
]
