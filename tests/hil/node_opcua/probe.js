// node-opcua client probe for tests/hil/test_security_node_opcua.py (an independent OPC UA stack).
// usage: node probe.js ENDPOINT PKI_DIR USER PASSWORD NODEID -> "READ <status> <value>" (exit 0) or "REFUSED <why>" (exit 3)
const { OPCUAClient, MessageSecurityMode, SecurityPolicy, UserTokenType, AttributeIds } = require("node-opcua-client");
const { OPCUACertificateManager } = require("node-opcua-certificate-manager");
(async () => {
  const [endpoint, pkiDir, user, password, nodeId] = process.argv.slice(2);
  const certificateManager = new OPCUACertificateManager({ rootFolder: pkiDir, automaticallyAcceptUnknownCertificate: true });
  await certificateManager.initialize();
  const client = OPCUAClient.create({
    applicationName: "nodeprobe", applicationUri: "urn:gridtwin:nodeprobe",
    securityMode: MessageSecurityMode.SignAndEncrypt, securityPolicy: SecurityPolicy.Basic256Sha256,
    endpointMustExist: false, connectionStrategy: { maxRetry: 0, initialDelay: 100 },
    clientCertificateManager: certificateManager, requestedSessionTimeout: 10000,
  });
  try {
    await client.connect(endpoint);
    const session = await client.createSession({ type: UserTokenType.UserName, userName: user, password });
    const dv = await session.read({ nodeId, attributeId: AttributeIds.Value });
    console.log("READ " + dv.statusCode.name + " " + dv.value.value);
    await session.close();
    await client.disconnect();
    process.exit(0);
  } catch (err) {
    console.log("REFUSED " + err.message.split("\n")[0]);
    try { await client.disconnect(); } catch (e) {}
    process.exit(3);
  }
})();
