// The openssl-made test certificates live with the dev stack, so the demo can use them too.
export { makeTestCerts, type TestCerts } from '../../agent/devstack/dev-pki.js';
