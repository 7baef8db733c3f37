// The scenario engine's public face: registering every operation family, then parsing and
// running files. Importing this module is what makes all operations available.

import './ops-ioasid.ts';
import './ops-hw.ts';
import './ops-iommufd.ts';

export { type ParsedStep, parseScenario, type Scenario, ScenarioSyntaxError } from './parse.ts';
export { Handle, type OpResult } from './registry.ts';
export { type FileRecord, type RunOptions, runScenario, type StepRecord } from './runner.ts';
export { matches, show, toJsonValue } from './values.ts';
