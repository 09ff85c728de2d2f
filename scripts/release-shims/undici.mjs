// Stands in for 'undici' in the release bundle only (scripts/build-release.sh aliases it): the
// agent uses undici's Agent and global dispatcher, not fetch, WebSocket, caches, proxies or mocks,
// which are over half of undici's code and ~7 MB of a Pi's memory once loaded. Named exports, so
// esbuild stops the build if the agent ever imports something missing here. The paths are
// undici's own files at the version package-lock.json pins; tests and `npm run build` use the
// whole package.
import Dispatcher from '../../node_modules/undici/lib/dispatcher/dispatcher.js';
import api from '../../node_modules/undici/lib/api/index.js';
import AgentClass from '../../node_modules/undici/lib/dispatcher/agent.js';
import globalDispatcher from '../../node_modules/undici/lib/global.js';

// What undici's index.js does: request(), stream()... are Dispatcher methods.
Object.assign(Dispatcher.prototype, api);

export const Agent = AgentClass;
export const getGlobalDispatcher = globalDispatcher.getGlobalDispatcher;
