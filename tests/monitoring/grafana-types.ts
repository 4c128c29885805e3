// The Grafana types the dashboard is checked against; test_dashboard.py turns each into JSON Schema.
import type { Dashboard } from "@grafana/schema/dist/types/raw/dashboard/x/types.gen";
import type * as timeseries from "@grafana/schema/dist/types/raw/composable/timeseries/panelcfg/x/types.gen";
import type * as stat from "@grafana/schema/dist/types/raw/composable/stat/panelcfg/x/types.gen";

export type DashboardModel = Dashboard;
export type TimeseriesOptions = timeseries.Options;
export type TimeseriesFieldConfig = timeseries.FieldConfig;
export type StatOptions = stat.Options;
