// Type-checks ../flightdeck.json against the Dashboard type of @grafana/schema, the
// schema Grafana itself is generated from. Nothing runs: `tsc --noEmit` passing is the check.
//
// What it catches:
//   1. a field of the wrong type or a required field missing anywhere in the dashboard
//      (the assignment to `checked` below);
//   2. a field the schema does not know (a typo such as `fieldconfig` or `legendformat`),
//      which Grafana would silently ignore (`noUnknownFields`);
//   3. the project's own rules for every panel that is not a row: a title, a description,
//      a unit, a datasource, and Prometheus targets with an expression and a legend
//      (`panelsFollowRules`, `targetsHaveNoUnknownFields`).
//
// One limit: a JSON import gives every string the type `string`, so a field that the
// schema types as a string enum or a literal union (ThresholdsMode, FieldColorModeId,
// VariableType, 'row', ...) is checked as a string, not against its allowed values; that
// every datasource is the `${datasource}` variable is checked by deploy/monitoring-check.sh.

import type { Dashboard, DataQuery } from '@grafana/schema';
import dashboard from '../flightdeck.json';

// The schema's types as a JSON import can match them: string enums and literal unions
// become `string`; everything else keeps its type.
type Json<T> = T extends string
  ? string
  : T extends number
    ? number
    : T extends boolean
      ? boolean
      : T extends readonly (infer E)[]
        ? Json<E>[]
        : T extends object
          ? { [K in keyof T]: Json<T[K]> }
          : T;

// 1. Types and required fields.
export const checked: Json<Dashboard> = dashboard;

// 2. Unknown fields. A JSON import is not an object literal, so TypeScript's excess
// property check does not apply; `Extra` walks the JSON type and the schema type together
// and yields the path of every key the schema does not have.

// Keys that really are in the JSON (TypeScript adds the keys of an array's other elements
// as `?: undefined`).
type PresentKeys<A> = {
  [K in keyof A]-?: [Exclude<A[K], undefined>] extends [never] ? never : K;
}[keyof A];
// The members of a schema union that the JSON value matches (a row matches RowPanel).
type Matching<T, A> = T extends unknown ? (A extends T ? T : never) : never;
type AnyKey<T> = T extends unknown ? keyof T : never;
type Field<T, K> = T extends unknown ? (K extends keyof T ? T[K] : never) : never;
type Element<T> = T extends readonly (infer E)[] ? E : never;
// An open record (`Record<string, unknown>`: panel options, custom field config) allows any key.
type IsOpen<T> = T extends unknown ? (string extends keyof T ? true : false) : never;

type Extra<A, T, Path extends string> = unknown extends T
  ? never
  : A extends readonly (infer E)[]
    ? Extra<E, Element<T>, `${Path}[]`>
    : A extends object
      ? [Matching<T, A>] extends [never]
        ? never // a wrong shape: reported by the assignment above
        : true extends IsOpen<Matching<T, A>>
          ? never
          :
              | `${Path}.${Exclude<PresentKeys<A>, AnyKey<Matching<T, A>>> & string}`
              | {
                  [K in PresentKeys<A> & AnyKey<Matching<T, A>>]: Extra<
                    Exclude<A[K], undefined>,
                    Field<Matching<T, A>, K>,
                    `${Path}.${K & string}`
                  >;
                }[PresentKeys<A> & AnyKey<Matching<T, A>>]
      : never;

type NoneOf<Problems> = [Problems] extends [never] ? true : Problems;

type Imported = typeof dashboard;
export const noUnknownFields: NoneOf<Extra<Imported, Json<Dashboard>, 'dashboard'>> = true;

// 3. The project's rules for panels. A Prometheus target: DataQuery's fields and the
// Prometheus query editor's own.
interface PrometheusTarget extends DataQuery {
  datasource: { type: string; uid: string };
  expr: string;
  legendFormat: string;
  editorMode?: 'code' | 'builder';
  range?: boolean;
  instant?: boolean;
  format?: 'time_series' | 'table' | 'heatmap';
  interval?: string;
  exemplar?: boolean;
}

interface FlightdeckPanel {
  id: number;
  type: string;
  title: string;
  description: string;
  datasource: { type: string; uid: string };
  gridPos: { h: number; w: number; x: number; y: number };
  fieldConfig: { defaults: { unit: string } };
  targets: Json<PrometheusTarget>[];
}

type TopLevel = Element<Imported['panels']>;
// Rows carry `collapsed`; panels inside a collapsed row are checked too.
type Row = Extract<TopLevel, { collapsed: boolean }>;
type Panels = Exclude<TopLevel, Row> | Element<Row['panels']>;

declare const panels: Panels;
export const panelsFollowRules: FlightdeckPanel = panels;
export const targetsHaveNoUnknownFields: NoneOf<
  Extra<Element<Panels['targets']>, Json<PrometheusTarget>, 'target'>
> = true;
